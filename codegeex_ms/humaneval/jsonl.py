"""Append-only JSON-lines files that survive interruption.

A run appends one record per finished sample and flushes it, so a killed run loses at most the
line being written. :func:`read_records` drops such a torn last line (truncating the file so
the next append starts on a fresh line); a bad line anywhere else is an error.
"""

import json
from pathlib import Path


def read_records(path: Path, repair: bool = True) -> list:
    """All records of ``path`` ([] if it does not exist).

    With ``repair``, an unparseable last line without a trailing newline (an interrupted write)
    is cut off the file. Raises ValueError naming the file and line for any other bad line.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records, offset = [], 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        last = number == len(lines)
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if not last:
                    raise ValueError(f"{path}:{number}: not a JSON record ({e}); fix or remove "
                                     "the line") from e
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                break
            if last and repair:  # a complete record whose newline was not written yet
                with open(path, "ab") as f:
                    f.write(b"\n")
        offset += len(line) + 1
    return records


class JsonlWriter:
    """Appends records to ``path``, one JSON object per line, flushed after each."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
