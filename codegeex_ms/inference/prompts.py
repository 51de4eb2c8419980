"""Prompt construction for the three tasks: complete, translate, explain (reference section 6)."""

from __future__ import annotations

from codegeex_ms.data.languages import Languages

TASKS = ("complete", "translate", "explain")


def resolve_language(languages: Languages, name: str) -> str:
    """Display name (``Python``, ``C++``) for a user-given name; ValueError listing the choices."""
    display = languages.from_name(name)
    if display is None:
        raise ValueError(f"unknown language {name!r}; known: {', '.join(languages.names)}")
    return display


def completion_prompt(code: str, language: str | None, languages: Languages) -> str:
    """``LANGUAGE_TAG + "\\n" + code``; the code alone when no language is given."""
    if not language:
        return code
    return languages.tag(resolve_language(languages, language)) + "\n" + code


def translation_prompt(code: str, source: str, target: str, languages: Languages,
                       target_prefix: str = "") -> str:
    """The HumanEval-X translation prompt: ``code translation\\n{Src}:\\n{code}\\n{Tgt}:\\n{prefix}``.

    ``code`` is the source program (declaration + solution), right-stripped; ``target_prefix`` is
    the beginning of the target program (its declaration) if known.
    """
    src, tgt = resolve_language(languages, source), resolve_language(languages, target)
    return f"code translation\n{src}:\n{code.rstrip()}\n{tgt}:\n{target_prefix}"


def _comment_marks(tag: str) -> tuple[str, str]:
    """(opening, closing) comment marks of a tag line such as ``/* language: CSS */``."""
    head, _, tail = tag.partition("language:")
    closing = tail.strip().split(" ")[-1] if tail.strip().endswith(("*/", "-->", "}")) else ""
    return head.strip(), closing


def explanation_prompt(code: str, language: str, languages: Languages) -> str:
    """Code followed by an open comment asking for its explanation, in the language's comment style."""
    display = resolve_language(languages, language)
    tag = languages.tag(display)
    opening, closing = _comment_marks(tag)
    ask = f"{opening} Explanation of the code above {closing}".rstrip()
    return f"{tag}\n{code.rstrip()}\n\n{ask}\n{opening} "
