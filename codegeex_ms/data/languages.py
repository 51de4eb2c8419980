"""Language facts: names, tag lines, detection from file extensions, and the HumanEval-X six.

Tag lines come from ``language_tags.json`` (name -> tag, e.g. ``"python": "# language: Python"``);
several names may share a tag (``cpp``/``c++``). A language's canonical *display name* is the name
inside its tag (``Python``, ``C++``), so aliases collapse to one language.

The six HumanEval-X languages (:data:`HUMANEVAL_LANGUAGES`) have their own short keys (``cpp``,
``js``), task-id prefixes and stop-rule kind; they need no data file, so scoring and reports
work without the tags file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import PurePath

from codegeex_ms.env.paths import require_file, shared_data_dir

# Extension (lower case, with dot) -> name in language_tags.json.
EXTENSIONS = {
    ".c": "c", ".h": "c",
    ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".c++": "c++", ".hh": "c++", ".hpp": "c++",
    ".hxx": "c++", ".h++": "c++", ".ipp": "c++", ".inl": "c++",
    ".cs": "c#", ".css": "css", ".cu": "cuda", ".cuh": "cuda", ".dart": "dart", ".lua": "lua",
    ".m": "objective-c", ".mm": "objective-c++",
    ".py": "python", ".pyw": "python", ".pyi": "python",
    ".pl": "perl", ".pm": "perl", ".pro": "prolog", ".swift": "swift",
    ".lisp": "lisp", ".lsp": "lisp", ".el": "lisp",
    ".java": "java", ".scala": "scala", ".sc": "scala", ".tex": "tex", ".sty": "tex",
    ".vue": "vue", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
    ".php": "php", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".go": "go",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".rs": "rust", ".sql": "sql",
    ".kt": "kotlin", ".kts": "kotlin", ".vb": "vb", ".rb": "ruby", ".pas": "pascal",
    ".r": "r", ".f": "fortran", ".for": "fortran", ".f90": "fortran", ".f95": "fortran",
    ".f03": "fortran", ".f08": "fortran", ".lean": "lean", ".dpr": "delphi",
    ".scm": "scheme", ".ss": "scheme", ".bas": "basic", ".asm": "assembly", ".s": "assembly",
    ".groovy": "groovy", ".gradle": "groovy", ".abap": "abap", ".gd": "gdscript",
    ".hs": "haskell", ".lhs": "haskell", ".jl": "julia", ".ex": "elixir", ".exs": "elixir",
    ".vba": "excel", ".clj": "clojure", ".cljs": "clojure", ".cljc": "clojure",
    ".as": "actionscript", ".sol": "solidity", ".ps1": "powershell", ".psm1": "powershell",
    ".erl": "erlang", ".hrl": "erlang", ".cob": "cobol", ".cbl": "cobol",
}

# Common spellings in dataset ``language`` fields that are not keys of language_tags.json.
ALIASES = {"bash": "shell", "sh": "shell", "golang": "go", "ts": "typescript", "py": "python",
           "c-sharp": "c#", "visual basic": "vb", "tsx": "typescript", "jsx": "javascript"}

_TAG_NAME = re.compile(r"language:\s*(.*?)\s*(?:\*/|-->|\})?\s*$")


def default_tags_path():
    """``<shared data>/language_tags.json``."""
    return shared_data_dir() / "language_tags.json"


class Languages:
    """Name/extension -> display name -> tag line, from a ``language_tags.json`` mapping."""

    def __init__(self, tags: dict[str, str]):
        self._tag_by_display: dict[str, str] = {}
        self._display_by_name: dict[str, str] = {}
        for name, tag in tags.items():
            m = _TAG_NAME.search(tag)
            if not m or not m.group(1):
                raise ValueError(f"language tag {tag!r} (for {name!r}) has no 'language: NAME' part")
            display = m.group(1)
            self._tag_by_display.setdefault(display, tag)
            self._display_by_name[name.lower()] = display

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Languages":
        """From a JSON file (default ``<shared data>/language_tags.json``)."""
        path = require_file(path or default_tags_path(), "language tags file (language_tags.json)")
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    @property
    def names(self) -> list[str]:
        """Display names of all languages, sorted."""
        return sorted(self._tag_by_display)

    def from_name(self, name: str | None) -> str | None:
        """Display name for a language name such as ``"Python"``, ``"cpp"``, ``"bash"``; None if unknown."""
        if not name:
            return None
        key = name.strip().lower()
        return self._display_by_name.get(ALIASES.get(key, key))

    def from_path(self, path: str | os.PathLike | None) -> str | None:
        """Display name for a file path by its extension; None if unknown."""
        if not path:
            return None
        name = EXTENSIONS.get(PurePath(path).suffix.lower())
        return self._display_by_name.get(name) if name else None

    def tag(self, display: str) -> str:
        """Tag line (no newline) for a display name returned by ``from_name``/``from_path``."""
        return self._tag_by_display[display]


@dataclass(frozen=True)
class HumanEvalLanguage:
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


HUMANEVAL_LANGUAGES = {
    lang.key: lang
    for lang in (
        HumanEvalLanguage("python", "Python", "Python", braces=False),
        HumanEvalLanguage("cpp", "C++", "CPP", braces=True),
        HumanEvalLanguage("java", "Java", "Java", braces=True),
        HumanEvalLanguage("js", "JavaScript", "JavaScript", braces=True),
        HumanEvalLanguage("go", "Go", "Go", braces=True),
        HumanEvalLanguage("rust", "Rust", "Rust", braces=True),
    )
}

_HUMANEVAL_ALIASES = {"c++": "cpp", "javascript": "js", "py": "python", "golang": "go",
                      "rs": "rust"}


def get_language(name: str) -> HumanEvalLanguage:
    """Look up a HumanEval-X language by key, display name or alias (case-insensitive).

    Raises ValueError naming the bad name and the accepted keys.
    """
    key = name.strip().lower()
    key = _HUMANEVAL_ALIASES.get(key, key)
    if key not in HUMANEVAL_LANGUAGES:
        raise ValueError(f"unknown HumanEval-X language {name!r}; use one of "
                         f"{sorted(HUMANEVAL_LANGUAGES)}")
    return HUMANEVAL_LANGUAGES[key]


def parse_language_list(text: str) -> list:
    """Parse a comma-separated HumanEval-X language list (``"python,cpp"`` or ``"all"``) into
    keys, in order."""
    if text.strip().lower() == "all":
        return list(HUMANEVAL_LANGUAGES)
    keys = [get_language(part).key for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError(f"empty language list {text!r}; use e.g. 'python,cpp' or 'all'")
    return list(dict.fromkeys(keys))
