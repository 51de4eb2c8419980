"""The execute step: run every sample of ``samples.jsonl`` not yet in ``results.jsonl``, in
parallel, appending one result per sample as it finishes (so an interrupted run resumes).

No sample stops the step: one that cannot even be assembled (an unknown task, a malformed
record) or whose execution fails in the harness gets an ``error`` result with the reason."""

import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from .assembly import assemble_program
from .execution import ERROR, Executor, Outcome
from .generation import sample_key
from .jsonl import JsonlWriter, read_records
from .problems import Track, track_code_prefix


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
