"""Rendering an OpenAI chat into a CodeGeeX prompt.

CodeGeeX-13B is a code model, not a chat model: it knows no roles. A chat is rendered as the
text of its messages in order (system, user and earlier assistant turns alike), each followed by
a newline, and the model's continuation of that text is the assistant's answer. So a user
message holding code to finish (``def fib(n):``) gets its continuation; a trailing assistant
message is a prefix the answer continues (its text ends the prompt without a newline).
"""

from __future__ import annotations


def render_chat(messages) -> str:
    """``messages``: objects with ``role`` and ``content`` (str) → the prompt text."""
    parts = []
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        parts.append(message.content if last and message.role == "assistant" else message.content + "\n")
    return "".join(parts)
