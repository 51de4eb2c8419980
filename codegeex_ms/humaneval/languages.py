"""The six HumanEval-X languages: canonical keys, display names, data file names and aliases."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    """One HumanEval-X language.

    ``key`` is the name used in file names and records (``python``, ``cpp``, ``java``, ``js``,
    ``go``, ``rust``); ``display`` is the name used in prompts and reports (reference section 6);
    ``task_prefix`` is the prefix of its task ids (``CPP/0``); ``braces`` says whether the
    brace-counting stop rule applies.
    """

    key: str
    display: str
    task_prefix: str
    braces: bool


LANGUAGES = {
    lang.key: lang
    for lang in (
        Language("python", "Python", "Python", braces=False),
        Language("cpp", "C++", "CPP", braces=True),
        Language("java", "Java", "Java", braces=True),
        Language("js", "JavaScript", "JavaScript", braces=True),
        Language("go", "Go", "Go", braces=True),
        Language("rust", "Rust", "Rust", braces=True),
    )
}

_ALIASES = {"c++": "cpp", "javascript": "js", "py": "python", "golang": "go", "rs": "rust"}


def get_language(name: str) -> Language:
    """Look up a language by key, display name or alias (case-insensitive).

    Raises ValueError naming the bad name and the accepted keys.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise ValueError(f"unknown HumanEval-X language {name!r}; use one of {sorted(LANGUAGES)}")
    return LANGUAGES[key]


def parse_language_list(text: str) -> list:
    """Parse a comma-separated language list (``"python,cpp"`` or ``"all"``) into keys, in order."""
    if text.strip().lower() == "all":
        return list(LANGUAGES)
    keys = [get_language(part).key for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError(f"empty language list {text!r}; use e.g. 'python,cpp' or 'all'")
    return list(dict.fromkeys(keys))
