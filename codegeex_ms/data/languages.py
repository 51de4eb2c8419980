"""Language names, tag lines and detection from file extensions.

Tag lines come from ``language_tags.json`` (name -> tag, e.g. ``"python": "# language: Python"``);
several names may share a tag (``cpp``/``c++``). A language's canonical *display name* is the name
inside its tag (``Python``, ``C++``), so aliases collapse to one language.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import PurePath

from codegeex_ms.paths import require_file, shared_data_dir

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
