"""Read throughput of the pre-training dataset pipeline with EOD reset.

Writes synthetic packed shards (random token ids; documents of geometric length with mean
``--doc-tokens``, separated by EOD) to a temporary directory, then iterates
``create_pretrain_dataset`` (shuffled, batched) for each setting and reports samples/s and the
time one batch (``--batch-size`` samples of ``--seq-length`` tokens) costs. It also times the
NumPy mask function alone on one batch, in this process.

    python bench/bench_dataset.py [--seq-length 2048 --batch-size 16 --samples 512]
                                  [--workers 1 2] [--json out.json]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from codegeex_ms.data.masks import eod_reset_masks  # noqa: E402
from codegeex_ms.data.mindrecord_io import ShardWriter, write_manifest  # noqa: E402
from codegeex_ms.data.packing import Packer  # noqa: E402
from codegeex_ms.data.pretrain_dataset import create_pretrain_dataset  # noqa: E402

EOD = 50256


def write_synthetic(directory: Path, seq_length: int, samples: int, doc_tokens: int, seed=0) -> float:
    """Pack random documents into ``samples`` samples; returns the mean EODs per sample."""
    rng = np.random.default_rng(seed)
    packer, writer = Packer(seq_length + 1, EOD), ShardWriter(directory, seq_length + 1, 10000)
    eods = 0
    while writer.samples_written < samples:
        for sample in packer.add(rng.integers(0, 50000, int(rng.geometric(1 / doc_tokens)))):
            if writer.samples_written < samples:
                writer.write(sample)
                eods += int((sample == EOD).sum())
    write_manifest(directory, writer.close(), seq_length=seq_length, sample_length=seq_length + 1,
                   eod_id=EOD, vocab_size=50400, padding_tokens=0)
    return eods / samples


def time_pipeline(path, args, workers, eod_reset):
    ds = create_pretrain_dataset(path, args.seq_length, args.batch_size, seed=1, eod_id=EOD,
                                 eod_reset=eod_reset, num_parallel_workers=workers)
    it = ds.create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(it)  # pipeline start-up is not throughput
    start, batches = time.perf_counter(), 0
    for _ in it:
        batches += 1
    seconds = time.perf_counter() - start
    rate = batches * args.batch_size / seconds
    return {"workers": workers, "eod_reset": eod_reset, "batches": batches,
            "samples_per_s": rate, "ms_per_batch": 1e3 * args.batch_size / rate}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--doc-tokens", type=int, default=600, help="mean document length in tokens")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        eods_per_sample = write_synthetic(Path(tmp), args.seq_length, args.samples, args.doc_tokens)
        batch = np.random.default_rng(2).integers(0, 50000, (args.batch_size, args.seq_length))
        batch[np.random.default_rng(3).random(batch.shape) < 1 / args.doc_tokens] = EOD
        mask_ms = []
        for _ in range(5):
            start = time.perf_counter()
            eod_reset_masks(batch, EOD)
            mask_ms.append((time.perf_counter() - start) * 1e3)
        mask_ms = min(mask_ms)
        rows = [time_pipeline(tmp, args, w, reset) for w in args.workers for reset in (True, False)]

    print(f"{args.samples} samples of {args.seq_length}+1 tokens, {eods_per_sample:.1f} EODs per "
          f"sample on average; batch {args.batch_size}")
    print(f"NumPy eod_reset_masks alone for one batch: {mask_ms:.1f} ms (best of 5)")
    print(f"{'workers':>7} {'eod_reset':>9} {'samples/s':>10} {'ms/batch':>9}")
    for r in rows:
        print(f"{r['workers']:7d} {str(r['eod_reset']):>9} {r['samples_per_s']:10.1f} {r['ms_per_batch']:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seq_length": args.seq_length, "batch_size": args.batch_size,
                       "samples": args.samples, "eods_per_sample": eods_per_sample,
                       "mask_ms_per_batch_numpy": mask_ms, "pipeline": rows}, f, indent=1)


if __name__ == "__main__":
    main()
