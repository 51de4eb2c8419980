"""Peak memory of checkpoint conversion: it must stay near one tensor, not the file size.

Writes a synthetic release-layout .pt of random FP16 weights (default: hidden 2048, 18 layers,
52224 vocab rows: about 2.1 GB), converts it with ``python -m codegeex_ms.convert`` in fresh
subprocesses (.pt -> .ckpt, .pt -> .safetensors, and both back to .pt), and prints each
subprocess's peak resident set size (measured by GNU ``/usr/bin/time``) next to the input size. Baseline rows give
the RSS of processes that only import the converter (``--help``) or MindSpore. Big files are deleted at the
end unless ``--keep``.

    python bench/bench_convert_memory.py [--hidden 2048 --layers 18] [--workdir DIR] [--json out.json]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from codegeex_ms.checkpoint import ModelSizes, TensorInfo, release_layout, write_checkpoint  # noqa: E402

TIME = "/usr/bin/time"  # GNU time; Debian/Ubuntu: apt-get install -y time


def write_synthetic(path: Path, sizes: ModelSizes, seed: int = 0) -> int:
    """Write random FP16 weights (N(0, 0.02)) in the release layout; return the largest tensor's bytes."""
    layout = release_layout(sizes)
    rng = np.random.default_rng(seed)
    infos = {name: TensorInfo(shape, "float16") for name, shape in layout.items()}

    def tensors():
        for name, shape in layout.items():
            yield name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    write_checkpoint(path, infos, tensors(), fmt="pt", progress=True)
    return max(int(np.prod(s)) * 2 for s in layout.values())


def measure(python_args) -> dict:
    """Run ``python <python_args>`` under GNU time; return its peak RSS (bytes) and wall time (s).

    GNU time forks the measured process from its own small image, so the RSS of this process
    (which Linux carries over into ``ru_maxrss`` across fork+exec) does not leak into the figure.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}
    start = time.perf_counter()
    done = subprocess.run([TIME, "-f", "MAXRSS_KB %M", sys.executable] + python_args, capture_output=True,
                          text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(python_args)} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stderr.splitlines() if x.startswith("MAXRSS_KB")][-1]
    return {"peak_rss_bytes": int(line.split()[1]) * 1024, "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size (FFN = 4x)")
    parser.add_argument("--layers", type=int, default=18, help="decoder layers (plus the top-query layer)")
    parser.add_argument("--vocab", type=int, default=52224, help="embedding rows")
    parser.add_argument("--positions", type=int, default=2048, help="max positions")
    parser.add_argument("--workdir", type=Path, help="where the big files go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the big files")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not os.access(TIME, os.X_OK):
        parser.error(f"{TIME} (GNU time) is needed to measure peak RSS; install it: apt-get install -y time")

    sizes = ModelSizes(args.vocab, args.hidden, 4 * args.hidden, args.layers, args.positions)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "synthetic.pt"
    try:
        largest = write_synthetic(source, sizes)
        rows = [dict(conversion="baseline: converter --help", input_bytes=0,
                     **measure(["-m", "codegeex_ms.convert", "--help"])),
                dict(conversion="baseline: import mindspore (ckpt writer)", input_bytes=0,
                     **measure(["-c", "import mindspore.train.checkpoint_pb2"]))]
        steps = [(source, workdir / "converted.ckpt"), (source, workdir / "converted.safetensors"),
                 (workdir / "converted.ckpt", workdir / "back_from_ckpt.pt"),
                 (workdir / "converted.safetensors", workdir / "back_from_safetensors.pt")]
        for src, dst in steps:
            result = measure(["-m", "codegeex_ms.convert", "--input", str(src), "--output", str(dst), "--quiet"])
            rows.append(dict(conversion=f"{src.suffix} -> {dst.suffix}", input_bytes=src.stat().st_size,
                             output_bytes=dst.stat().st_size, **result))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nsynthetic release layout: hidden {sizes.hidden_size}, FFN {sizes.ffn_hidden_size}, "
          f"{sizes.num_layers} layers + top-query layer, vocab {sizes.vocab_size}; "
          f"largest tensor {largest / 2**20:.0f} MiB")
    print("'over baseline' subtracts the matching baseline row (MindSpore's import when writing .ckpt).")
    print(f"{'conversion':<40} {'input GB':>9} {'peak RSS GB':>12} {'RSS/input':>10} {'over baseline GB':>17} "
          f"{'wall s':>7}")
    for row in rows:
        if row["input_bytes"]:
            base = rows[1 if row["conversion"].endswith(".ckpt") else 0]["peak_rss_bytes"]
            row["rss_over_baseline_bytes"] = row["peak_rss_bytes"] - base
            extra = f"{row['peak_rss_bytes'] / row['input_bytes']:>10.3f} {row['rss_over_baseline_bytes'] / 1e9:>17.2f}"
        else:
            extra = f"{'':>10} {'':>17}"
        print(f"{row['conversion']:<40} {row['input_bytes'] / 1e9:>9.2f} {row['peak_rss_bytes'] / 1e9:>12.2f} "
              f"{extra} {row['wall_s']:>7.1f}")
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes.__dict__, "largest_tensor_bytes": largest,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
