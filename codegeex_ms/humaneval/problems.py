"""Loading HumanEval-X problems from the shared data directory."""

import gzip
import json
from pathlib import Path

from ..paths import require_file, shared_data_dir
from ..data.languages import get_language


def humaneval_dir() -> Path:
    """Directory holding ``humaneval_{lang}.jsonl.gz`` and ``go_evaluation/``."""
    return shared_data_dir() / "humaneval-x"


def load_problems(language: str, data_dir: Path = None) -> dict:
    """Problems of one language as ``{task_id: record}`` in file order (164 per language).

    Records keep the dataset fields (``prompt``, ``declaration``, ``canonical_solution``, ``test``,
    ``example_test``; Go adds ``import``, ``test_setup``, ``docstring``). Raises FileNotFoundError
    naming the missing file.
    """
    lang = get_language(language)
    path = Path(data_dir or humaneval_dir()) / f"humaneval_{lang.key}.jsonl.gz"
    require_file(path, f"HumanEval-X {lang.display} problems")
    problems = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                problems[record["task_id"]] = record
    return problems


def task_number(task_id: str) -> int:
    """The problem number of a task id (``"CPP/12"`` -> 12), shared by all languages."""
    return int(task_id.rsplit("/", 1)[1])


def select_problems(problems: dict, limit: int = None, numbers=None) -> dict:
    """Keep problems whose number is in ``numbers`` (if given), then the first ``limit``."""
    items = [(t, p) for t, p in problems.items() if numbers is None or task_number(t) in numbers]
    if limit is not None:
        items = items[:limit]
    return dict(items)
