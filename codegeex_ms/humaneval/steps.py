"""The generate and execute steps, resumable: each appends one JSON line per finished sample.

Generate: model completions for every (track, problem, sample index), appended to
``samples.jsonl``. Generation goes through ``generate_fn(prompts, *, max_new_tokens, sampling,
seed, stop_fn) -> list[str]`` (``sampling``: an ``inference.sampling.SamplingParams``): completion texts (without the prompt) for a batch of model
inputs, where ``stop_fn(completion_text) -> bool`` tells the decoder a completion is finished (an
incremental :class:`~.stopping.IncrementalStopFn`: asking after every token scans only new text).
With the model (``codegeex_ms.evaluate``) a batch runs on the slot scheduler: batches hold
consecutive samples of one problem, whose equal prompts are prefilled once and share the cache
(``--batch-size`` up to the number of samples per problem makes the most of it).
:func:`canonical_generate_fn` answers with the dataset's solutions instead, to check the harness
end to end (every sample should pass).

Execute: run every sample of ``samples.jsonl`` not yet in ``results.jsonl``, in parallel,
appending one result per sample as it finishes. No sample stops the step: one that cannot even
be assembled (an unknown task, a malformed record) or whose execution fails in the harness gets
an ``error`` result with the reason.

Files: a run appends one record per finished sample and flushes it, so a killed run loses at
most the line being written. :func:`read_records` drops such a torn last line (truncating the
file so the next append starts on a fresh line); a bad line anywhere else is an error.
"""

import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from codegeex_ms.inference.sampling import SamplingParams

from .assembly import assemble_program
from .execution import ERROR, Executor, Outcome
from .problems import Track, model_input, source_problem, task_number, track_code_prefix
from .stopping import is_finished, make_stop_fn, truncate_completion


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


@dataclass(frozen=True)
class GenerateStep:
    """Settings of the generate step (reference: HumanEval sampling T=0.8, top-p 0.95)."""

    samples_per_problem: int = 200
    sampling: SamplingParams = SamplingParams(temperature=0.8, top_p=0.95)
    max_new_tokens: int = 512
    batch_size: int = 8
    seed: int = 1234


def sample_key(record: dict) -> tuple:
    """Identity of a sample: (track name, task id, sample index)."""
    return record["track"], record["task_id"], record["sample_idx"]


def pending_samples(tracks, problems: dict, n: int, done: set) -> list:
    """``[(track, task_id, sample_idx)]`` not in ``done``, in track/problem/index order.

    ``problems`` maps language key -> {task_id: problem}.
    """
    todo = []
    for track in tracks:
        for task_id in problems[track.language]:
            todo += [(track, task_id, i) for i in range(n) if (track.name, task_id, i) not in done]
    return todo


def generate_samples(tracks, problems: dict, generate_fn, samples_path, cfg: GenerateStep,
                     truncate: bool = True, progress: bool = True) -> int:
    """Generate the samples missing from ``samples_path``; return how many were added.

    Completions are cut with the stop rule (``truncate``; off for oracle solutions, which may
    define helpers after the function).
    Batches hold up to ``cfg.batch_size`` pending samples of one track (possibly of several
    problems, as language-aware stopping needs one language per batch). A batch's seed is
    derived from ``cfg.seed``, the track and its first sample, so a fresh run is reproducible;
    after an interruption the remaining samples are re-batched.
    """
    done = {sample_key(r) for r in read_records(samples_path)}
    todo = pending_samples(tracks, problems, cfg.samples_per_problem, done)
    added = 0
    batches = []
    for track in tracks:
        items = [item for item in todo if item[0] == track]
        batches += [items[i:i + cfg.batch_size] for i in range(0, len(items), cfg.batch_size)]
    with JsonlWriter(samples_path) as out, tqdm(total=len(todo), desc="generate",
                                                disable=not progress) as bar:
        for batch in batches:
            track, first_task, first_idx = batch[0]
            prompts = [model_input(track, problems[track.language][task_id],
                                   source_problem(track, problems, task_id))
                       for _, task_id, _ in batch]
            seed = (cfg.seed + zlib.crc32(track.name.encode()) + 1_000_003 * task_number(first_task)
                    + first_idx) % (2 ** 31)
            texts = generate_fn(prompts, max_new_tokens=cfg.max_new_tokens, sampling=cfg.sampling,
                                seed=seed, stop_fn=make_stop_fn(track.language))
            if len(texts) != len(prompts):
                raise RuntimeError(f"generate_fn returned {len(texts)} completions for "
                                   f"{len(prompts)} prompts")
            for (_, task_id, idx), text in zip(batch, texts):
                out.write({"track": track.name, "task_id": task_id, "sample_idx": idx,
                           "completion": (truncate_completion(text, track.language)
                                          if truncate else text),
                           "finished": is_finished(text, track.language)})
            added += len(batch)
            bar.update(len(batch))
    return added


def canonical_generate_fn(tracks, problems: dict):
    """generate_fn returning, for each model input of ``tracks``, the target's canonical solution.

    ``problems`` maps language -> {task_id: problem}. Raises KeyError for an unknown input.
    """
    answers = {}
    for track in tracks:
        for task_id, problem in problems[track.language].items():
            prompt = model_input(track, problem, source_problem(track, problems, task_id))
            answers[prompt] = problem["canonical_solution"]

    def generate_fn(prompts, **_):
        return [answers[p] for p in prompts]

    return generate_fn


def build_program(record: dict, problems: dict) -> tuple:
    """(language, program source) of a sample record; ``problems``: language -> {task_id: ...}."""
    track = Track.parse(record["track"])
    problem = problems[track.language][record["task_id"]]
    prefix = track_code_prefix(track, problem)
    return track.language, assemble_program(track.language, problem, prefix,
                                            record["completion"])


def execute_samples(samples_path, results_path, problems: dict, executor: Executor,
                    workers: int = 1, progress: bool = True) -> dict:
    """Execute pending samples; return ``{"executed": int, "skipped": {language: [reason, count]}}``.

    Samples of languages the executor skipped (no toolchain) get no result: they are reported as
    skipped, never as failures. ``workers`` threads each run one sample at a time.
    """
    done = {sample_key(r) for r in read_records(results_path)}
    todo, skipped = [], {}
    for record in read_records(samples_path):
        if sample_key(record) in done:
            continue
        language = Track.parse(record["track"]).language
        if language in executor.runners:
            todo.append(record)
        else:
            reason = executor.skipped.get(language, "language not requested for execution")
            skipped.setdefault(language, [reason, 0])[1] += 1

    def run_one(record):
        start = time.monotonic()
        step = "cannot assemble the program"
        try:
            language, source = build_program(record, problems)
            step = "harness error"
            return record, executor.run(language, source)
        except Exception as e:  # noqa: BLE001 -- recorded as this sample's error
            return record, Outcome(ERROR, f"{step}: {type(e).__name__}: {e}",
                                   time.monotonic() - start)

    with JsonlWriter(results_path) as out, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(todo), desc="execute", disable=not progress) as bar:
        futures = [pool.submit(run_one, r) for r in todo]
        try:
            for future in as_completed(futures):
                record, outcome = future.result()
                out.write({"track": record["track"], "task_id": record["task_id"],
                           "sample_idx": record["sample_idx"], "passed": outcome.passed,
                           **outcome.to_dict()})
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return {"executed": len(todo), "skipped": skipped}
