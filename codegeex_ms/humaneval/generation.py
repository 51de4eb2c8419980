"""The generate step: model completions for every (track, problem, sample index), appended to
``samples.jsonl`` and resumable.

Generation goes through ``generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed,
stop_fn) -> list[str]``: completion texts (without the prompt) for a batch of model inputs,
where ``stop_fn(completion_text) -> bool`` tells the decoder a completion is finished (an
incremental :class:`~.stopping.IncrementalStopFn`: asking after every token scans only new text).
With the model (``codegeex_ms.evaluate``) a batch runs on the slot scheduler: batches hold
consecutive samples of one problem, whose equal prompts are prefilled once and share the cache
(``--batch-size`` up to the number of samples per problem makes the most of it).
"""

import zlib
from dataclasses import dataclass

from tqdm import tqdm

from .jsonl import JsonlWriter, read_records
from .problems import Track, model_input, source_problem, task_number
from .stopping import is_finished, make_stop_fn, truncate_completion


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings of the generate step (reference: HumanEval sampling T=0.8, top-p 0.95)."""

    samples_per_problem: int = 200
    temperature: float = 0.8
    top_p: float = 0.95
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


def generate_samples(tracks, problems: dict, generate_fn, samples_path, cfg: SamplingConfig,
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
            texts = generate_fn(prompts, max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                                stop_fn=make_stop_fn(track.language))
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
