"""HumanEval-X problems and prompts: the data, tracks, model inputs (reference sections 6, 7).

Each sample has two texts: the *model input* fed to the decoder, and the *code prefix*, the
source code the completion continues (the program is code prefix + completion + tests).
"""

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..data.languages import Languages, get_language
from ..inference.prompts import resolve_language, translation_prompt
from ..env.paths import require_file, shared_data_dir


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


@lru_cache(maxsize=1)
def _languages() -> Languages:
    return Languages.load()


def language_tag(language: str) -> str:
    """Tag line of a HumanEval-X language, e.g. ``// language: C++``."""
    languages = _languages()
    return languages.tag(resolve_language(languages, get_language(language).display))


@dataclass(frozen=True)
class Track:
    """What is evaluated: generation in ``language``, or translation ``source`` -> ``language``.

    ``name`` identifies the track in records and reports: ``"cpp"`` or ``"python-to-cpp"``.
    """

    language: str
    source: str = None

    def __post_init__(self):
        object.__setattr__(self, "language", get_language(self.language).key)
        if self.source is not None:
            object.__setattr__(self, "source", get_language(self.source).key)
            if self.source == self.language:
                raise ValueError(f"translation source and target are both {self.language!r}")

    @property
    def name(self) -> str:
        return self.language if self.source is None else f"{self.source}-to-{self.language}"

    @property
    def task(self) -> str:
        return "generation" if self.source is None else "translation"

    @staticmethod
    def parse(name: str) -> "Track":
        """Inverse of :attr:`name`."""
        if "-to-" in name:
            source, target = name.split("-to-", 1)
            return Track(target, source)
        return Track(name)


def code_prefix(problem: dict, language: str) -> str:
    """The code the completion continues: the problem's ``prompt`` (declaration + docstring).

    Rust's ``prompt`` is only the docstring comment, so its ``declaration`` (imports + signature)
    follows it. Translation uses the same prefix: the model sees only the target declaration,
    but the program is assembled as prompt + completion + tests (reference section 7), which
    keeps helper functions some prompts define (e.g. ``encode_cyclic``) and that several
    declarations lack.
    """
    key = get_language(language).key
    if key == "rust":
        return problem["prompt"] + problem["declaration"]
    return problem["prompt"]


def generation_input(problem: dict, language: str) -> str:
    """Model input for generation: ``LANGUAGE_TAG + "\\n" + prompt``."""
    return language_tag(language) + "\n" + code_prefix(problem, language)


def translation_input(src_problem: dict, src_language: str, tgt_problem: dict,
                      tgt_language: str) -> str:
    """Model input for translation (reference section 6):

    ``"code translation\\n{Src}:\\n{src declaration}{src solution, right-stripped}\\n{Tgt}:\\n{tgt declaration}"``.
    """
    source = src_problem["declaration"] + src_problem["canonical_solution"]
    return translation_prompt(source, get_language(src_language).display,
                              get_language(tgt_language).display, _languages(),
                              tgt_problem["declaration"])


def model_input(track: Track, problem: dict, source_problem: dict = None) -> str:
    """Model input of one sample of ``track`` (``source_problem`` is needed for translation)."""
    if track.source is None:
        return generation_input(problem, track.language)
    return translation_input(source_problem, track.source, problem, track.language)


def track_code_prefix(track: Track, problem: dict) -> str:
    """Code prefix of one sample of ``track`` (the same for generation and translation)."""
    return code_prefix(problem, track.language)


def source_problem(track: Track, problems: dict, task_id: str):
    """The translation source's problem with the same number as ``task_id`` (None: generation)."""
    if track.source is None:
        return None
    number = task_number(task_id)
    for tid, problem in problems[track.source].items():
        if task_number(tid) == number:
            return problem
    raise KeyError(f"no {track.source} problem number {number} for translation track {track.name}")
