"""Input discovery and document loading.

Inputs are source files, directories of them (walked recursively in sorted order, hidden
directories skipped) and ``.jsonl``/``.jsonl.gz`` files whose records carry a ``code`` string and
optionally ``language`` and ``path``. Each source file or JSONL record is one *unit*; loading a unit
yields a ``Document`` or the reason it is unusable. Nothing here raises on bad content.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from codegeex_ms.data.languages import Languages

UNREADABLE, BINARY, NOT_UTF8, BAD_RECORD, UNKNOWN_LANGUAGE = (
    "unreadable", "binary", "not_utf8", "bad_record", "unknown_language")
READ_REASONS = (UNREADABLE, BINARY, NOT_UTF8, BAD_RECORD, UNKNOWN_LANGUAGE)


@dataclass(frozen=True)
class Unit:
    """One would-be document: a source file to read (``path``), a raw JSONL line (``line``), or an
    input that failed while being listed (``error``, a reason). ``origin`` names it for messages."""

    origin: str
    path: str | None = None
    line: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class Document:
    """A usable document: its ``origin``, language display name and text (no tag line)."""

    origin: str
    language: str
    text: str


def is_jsonl(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a JSONL input (``.jsonl`` or ``.jsonl.gz``)."""
    name = str(path).lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def discover(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by ``inputs`` (directories expanded, sorted). Raises FileNotFoundError for an
    input that does not exist."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names))
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist; pass source files, directories "
                                    f"or .jsonl/.jsonl.gz files.")
    return files


def _jsonl_units(path: Path) -> Iterator[Unit]:
    lineno = 0
    try:
        opener = gzip.open if str(path).lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield Unit(origin=f"{path}:{lineno}", line=line)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        yield Unit(origin=f"{path}:{lineno + 1}", error=UNREADABLE)


def iter_units(files: Iterable[Path]) -> Iterator[Unit]:
    """Units of ``files`` in order: one per source file, one per non-blank JSONL line."""
    for path in files:
        if is_jsonl(path):
            yield from _jsonl_units(path)
        else:
            yield Unit(origin=str(path), path=str(path))


def _decode(data: bytes) -> tuple[str | None, str | None]:
    if b"\x00" in data:
        return None, BINARY
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return None, NOT_UTF8


def _load_record(unit: Unit, languages: Languages) -> tuple[Document | None, str | None]:
    try:
        record = json.loads(unit.line)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return None, BAD_RECORD
    if not isinstance(record, dict) or not isinstance(record.get("code"), str):
        return None, BAD_RECORD
    text = record["code"]
    if "\x00" in text:
        return None, BINARY
    path = record.get("path") if isinstance(record.get("path"), str) else None
    lang_field = record.get("language") if isinstance(record.get("language"), str) else None
    language = languages.from_name(lang_field) if lang_field else languages.from_path(path)
    if language is None:
        return None, UNKNOWN_LANGUAGE
    return Document(f"{unit.origin} ({path})" if path else unit.origin, language, text), None


def load_unit(unit: Unit, languages: Languages) -> tuple[Document | None, str | None]:
    """``(document, None)`` for a usable unit, else ``(None, reason)`` with a reason from
    ``READ_REASONS``. A language is required: from the record's ``language`` field, else from the
    file extension (of the file, or of the record's ``path``)."""
    if unit.error is not None:
        return None, unit.error
    if unit.line is not None:
        return _load_record(unit, languages)
    language = languages.from_path(unit.path)
    if language is None:
        return None, UNKNOWN_LANGUAGE
    try:
        with open(unit.path, "rb") as f:
            data = f.read()
    except OSError:
        return None, UNREADABLE
    text, reason = _decode(data)
    if reason:
        return None, reason
    return Document(unit.origin, language, text), None
