"""Language-aware stop rules for HumanEval-X completions (reference section 7).

Python: a completion ends before its first non-empty line that does not start with a space or a
tab (this covers ``\\ndef``, ``\\nclass``, ``\\nif``, ``\\n#`` and ``\\nprint``). Brace languages
(C++, Java, JavaScript, Go, Rust): a completion ends at the first ``}`` where the number of ``}``
seen exceeds the number of ``{`` by one, i.e. the brace closing the function the prompt opened.
Braces inside strings and comments count too, as in the reference rule.

The same rule serves two users: the decoder asks :func:`is_finished` after each token, and the
evaluator cuts the completion with :func:`truncate_completion`.
"""

from .languages import get_language


def stop_index(text: str, language: str):
    """Index where the completion ``text`` ends under the stop rule, or None if it has not ended.

    For Python the index is the start of the first non-indented non-empty line; for brace
    languages it is one past the closing ``}``.
    """
    lang = get_language(language)
    if lang.braces:
        depth = 0
        for i, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth < 0:
                    return i + 1
        return None
    start = 0
    for line in text.split("\n"):
        if line.strip() and line[0] not in " \t":
            return start
        start += len(line) + 1
    return None


def is_finished(text: str, language: str) -> bool:
    """True once the completion ``text`` has reached its stop point (usable as a decode stop test)."""
    return stop_index(text, language) is not None


def make_stop_fn(language: str):
    """A one-argument ``stop_fn(completion_text) -> bool`` for ``language``, for generate_fn."""
    key = get_language(language).key
    return lambda text: is_finished(text, key)


def truncate_completion(text: str, language: str) -> str:
    """Cut ``text`` at its stop point; text that never reached it is returned unchanged.

    For Java the generation stops at the method's closing brace, while the prompt also opened
    ``class Solution {``: a ``"\\n}"`` is appended to close the class.
    """
    key = get_language(language).key
    end = stop_index(text, key)
    if end is None:
        return text
    text = text[:end]
    if key == "java":
        text += "\n}"
    return text
