"""Preprocessing: inputs -> documents -> filters -> exact dedup -> tag + tokenize -> packed shards.

Reading, filtering and tokenizing run in worker processes on fixed-size batches of units; results
come back in input order, so the output depends only on the inputs, the options and the seed, not
on the number of workers. Deduplication (first occurrence wins), the seeded document shuffle,
packing and writing happen in the main process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from codegeex_ms.data.filters import FILTER_REASONS, FilterConfig, filter_reason
from codegeex_ms.data.languages import Languages, default_tags_path
from codegeex_ms.data.mindrecord_io import ShardWriter, prepare_output, publish, write_manifest
from codegeex_ms.data.packing import Packer
from codegeex_ms.data.sources import READ_REASONS, discover, is_jsonl, iter_units, load_unit
from codegeex_ms.data.tokenizer import CodeGeeXTokenizer

DUPLICATE = "duplicate"
DROP_REASONS = READ_REASONS + FILTER_REASONS + (DUPLICATE,)
SUMMARY = "summary.json"
MAX_EXAMPLES = 5


@dataclass
class PreprocessOptions:
    """Options of ``preprocess``; ``workers=0`` runs everything in this process."""

    inputs: list
    output: Path
    tokenizer_dir: str | None = None
    language_tags: str | None = None
    seq_length: int = 2048
    filters: FilterConfig = field(default_factory=FilterConfig)
    workers: int = os.cpu_count() or 1
    seed: int = 1234
    shuffle: bool = True
    shuffle_buffer: int = 10000
    samples_per_shard: int = 10000
    batch_units: int = 64
    overwrite: bool = False
    progress: bool = True


class NoUsableInput(ValueError):
    """No document survived reading, filtering and deduplication."""


_WORKER: dict = {}


def _init_worker(tokenizer_dir, tags_path, filters: FilterConfig, single_threaded: bool) -> None:
    if single_threaded:  # one process per core already; keep tokenizers from spawning threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=CodeGeeXTokenizer.from_dir(tokenizer_dir),
                   languages=Languages.load(tags_path), filters=filters)


def process_units(units: list) -> list[tuple]:
    """Worker task: ``(origin, reason, language, digest, tokens)`` per unit, in order. Kept units
    have ``reason`` None, a 16-byte BLAKE2b ``digest`` of the text and int32 ``tokens`` of
    ``tag line + "\\n" + text`` (a literal ``<|endoftext|>`` in the text is encoded as text)."""
    tokenizer, languages, filters = _WORKER["tokenizer"], _WORKER["languages"], _WORKER["filters"]
    out, texts = [], []
    for unit in units:
        doc, reason = load_unit(unit, languages)
        if doc is not None:
            reason = filter_reason(doc.text, filters)
        if reason is not None:
            out.append((unit.origin, reason, None, None, None))
            continue
        digest = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).digest()
        out.append((doc.origin, None, doc.language, digest, len(texts)))
        texts.append(languages.tag(doc.language) + "\n" + doc.text)
    encoded = tokenizer.encode_batch(texts, allow_special=False) if texts else []
    return [r if r[1] is not None else r[:4] + (np.asarray(encoded[r[4]], dtype=np.int32),)
            for r in out]


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _ordered_map(fn: Callable, batches: Iterator[list], workers: int, initargs: tuple) -> Iterator:
    """``map(fn, batches)`` in order, over ``workers`` spawned processes with a bounded window."""
    if workers <= 0:
        _init_worker(*initargs[:3], single_threaded=False)
        yield from map(fn, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=initargs) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _ShuffleBuffer:
    """Seeded streaming shuffle over a buffer of ``size`` items (``size <= 0``: no shuffle)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.items = size, rng, []

    def push(self, item) -> list:
        if self.size <= 0:
            return [item]
        self.items.append(item)
        if len(self.items) <= self.size:
            return []
        i = int(self.rng.integers(len(self.items)))
        self.items[i], self.items[-1] = self.items[-1], self.items[i]
        return [self.items.pop()]

    def drain(self) -> list:
        items = [self.items[i] for i in self.rng.permutation(len(self.items))]
        self.items = []
        return items


def preprocess(opts: PreprocessOptions) -> dict:
    """Run the pipeline; returns the summary (also written to ``<output>/summary.json``).

    Raises FileNotFoundError for a missing input or tokenizer file, FileExistsError for an output
    that may not be replaced, and NoUsableInput when nothing survives.
    """
    if opts.seq_length < 1:
        raise ValueError(f"seq_length must be positive, got {opts.seq_length}")
    tokenizer = CodeGeeXTokenizer.from_dir(opts.tokenizer_dir)
    Languages.load(opts.language_tags)  # fail early on a bad tags file
    files = discover(opts.inputs)
    if not files:
        raise NoUsableInput(f"inputs {[str(p) for p in opts.inputs]} contain no files.")
    rng = np.random.default_rng(opts.seed)
    if opts.shuffle:
        files = [files[i] for i in rng.permutation(len(files))]
    output = Path(opts.output)
    staging = prepare_output(output, opts.overwrite)
    try:
        summary = _run(opts, tokenizer, files, rng, staging)
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _run(opts, tokenizer, files, rng, staging: Path) -> dict:
    sample_length = opts.seq_length + 1
    dropped, examples = Counter(), {}
    tokens_per_language, docs_per_language = Counter(), Counter()
    seen_digests: set[bytes] = set()
    files_seen = 0
    buffer = _ShuffleBuffer(opts.shuffle_buffer if opts.shuffle else 0, rng)
    packer = Packer(sample_length, tokenizer.eod_id)
    writer = ShardWriter(staging, sample_length, opts.samples_per_shard)

    def emit(tokens):
        for sample in packer.add(tokens):
            writer.write(sample)

    tags_path = str(opts.language_tags or default_tags_path())
    initargs = (str(tokenizer.source), tags_path, opts.filters, True)
    total = None if any(is_jsonl(f) for f in files) else len(files)
    with tqdm(total=total, unit="file", desc="preprocess", disable=not opts.progress) as bar:
        for results in _ordered_map(process_units, _batches(iter_units(files), opts.batch_units),
                                    opts.workers, initargs):
            for origin, reason, language, digest, tokens in results:
                files_seen += 1
                if reason is None and digest in seen_digests:
                    reason = DUPLICATE
                if reason is not None:
                    dropped[reason] += 1
                    examples.setdefault(reason, [])
                    if len(examples[reason]) < MAX_EXAMPLES:
                        examples[reason].append(origin)
                    continue
                seen_digests.add(digest)
                tokens_per_language[language] += len(tokens) + 1  # + its EOD
                docs_per_language[language] += 1
                for doc in buffer.push(tokens):
                    emit(doc)
            bar.update(len(results))
            bar.set_postfix(kept=sum(docs_per_language.values()), samples=writer.samples_written)
        for doc in buffer.drain():
            emit(doc)
    last, padding = packer.finish()
    if last is not None:
        writer.write(last)
    shards = writer.close()

    kept = sum(docs_per_language.values())
    if kept == 0:
        reasons = ", ".join(f"{r}: {n}" for r, n in dropped.most_common()) or "none"
        raise NoUsableInput(f"no usable document in {[str(p) for p in opts.inputs]} "
                            f"({files_seen} files seen; dropped {reasons}). Check the inputs, "
                            f"their extensions/language fields and the filter thresholds.")
    manifest = write_manifest(staging, shards, seq_length=opts.seq_length,
                              sample_length=sample_length, eod_id=tokenizer.eod_id,
                              vocab_size=tokenizer.vocab_size, padding_tokens=padding)
    summary = {
        "files_seen": files_seen,
        "files_kept": kept,
        "dropped": {r: dropped[r] for r in DROP_REASONS if dropped[r]},
        "dropped_examples": examples,
        "documents_per_language": dict(docs_per_language.most_common()),
        "tokens_per_language": dict(tokens_per_language.most_common()),
        "tokens_total": sum(tokens_per_language.values()),
        "padding_tokens": padding,
        "samples_written": manifest["num_samples"],
        "shards": len(shards),
        "seq_length": opts.seq_length,
        "eod_id": tokenizer.eod_id,
        "tokenizer": str(tokenizer.source),
        "seed": opts.seed,
        "shuffle": opts.shuffle,
        "filters": asdict(opts.filters),
    }
    with open(staging / SUMMARY, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable table of a ``preprocess`` summary."""
    lines = [f"files seen      {summary['files_seen']}",
             f"files kept      {summary['files_kept']}"]
    for reason, n in summary["dropped"].items():
        lines.append(f"  dropped {reason:<16} {n}")
    lines.append("tokens per language (tag line, code and EOD):")
    for lang, n in summary["tokens_per_language"].items():
        lines.append(f"  {lang:<20} {n:>12}  ({summary['documents_per_language'][lang]} docs)")
    lines += [f"tokens total    {summary['tokens_total']} (+ {summary['padding_tokens']} padding)",
              f"samples written {summary['samples_written']} of {summary['seq_length'] + 1} tokens "
              f"in {summary['shards']} shard(s)"]
    return "\n".join(lines)
