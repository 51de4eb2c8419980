"""Fused CPU kernels against MindSpore's built-in operators and this machine's memory bandwidth.

For each size (elements of the activation / of the attention scores) and dtype it times, in
graph mode (median of ``--reps`` calls after a warm-up call):

- FastGELU forward: the fused kernel vs ``ops.FastGeLU``;
- masked softmax forward: the fused kernel vs the composed built-ins of ``MaskedSoftmax(fused="off")``
  (Cast, Mul, Sub, Mul, Sub, Softmax, Cast), scores [1, 8, S, 2048] with a [1, 1, S, 2048] FP32 mask;
- with ``--backward``: the fused backward kernels, and FastGELU's built-in ``FastGeLUGrad``.

The bandwidth bound of a kernel is the bytes it must move (each input read once, the output
written once) divided by the measured copy bandwidth (2 × bytes / time of ``np.copyto`` between
two pre-touched arrays of the output's size, the best over 1..#CPU threads, measured right after
each timed call because a shared machine's bandwidth drifts), i.e. the time of a perfect
streaming kernel. Times include MindSpore's per-call graph launch (~0.5 ms here), which
dominates at 1M elements. Targets: ≥ 5× the built-in FastGeLU, within 2× of the bound for large
sizes.

    python bench/bench_kernels.py [--sizes 1M 4M 16M 64M] [--dtypes float32 float16] [--reps 5]
                                  [--backward] [--json out.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402
from mindspore.ops.operations._grad_ops import FastGeLUGrad  # noqa: E402

from codegeex_ms.ops import FastGelu, MaskedSoftmax, kernel_build  # noqa: E402
from codegeex_ms.ops.fused import fused_fast_gelu, fused_masked_softmax  # noqa: E402

HEADS, KEYS = 8, 2048
SCALE = 1.0 / np.sqrt(128.0)


class Call(nn.Cell):
    """A graph-mode wrapper around one primitive or Cell."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, *args):
        return self.fn(*args)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    try:
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError) as err:
        raise argparse.ArgumentTypeError(f"size {text!r}: use an element count like 1048576, 4M or 64M") from err


class CopyProbe:
    """Copy bandwidth (bytes read + written per second) for arrays of ``nbytes``: ``np.copyto``
    between two pre-touched arrays, split over 1..#CPU threads (the fastest split is used)."""

    def __init__(self, nbytes: int):
        self.src = np.ones(max(nbytes // 4, 1), np.float32)
        self.dst = np.zeros_like(self.src)
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(threads)
        self.splits = [[(i * self.src.size // k, (i + 1) * self.src.size // k) for i in range(k)]
                       for k in range(1, threads + 1)]

    def _copy(self, parts):
        list(self.pool.map(lambda r: np.copyto(self.dst[r[0]:r[1]], self.src[r[0]:r[1]]), parts))

    def bandwidth(self) -> float:
        best = float("inf")
        for parts in self.splits:
            start = time.perf_counter()
            self._copy(parts)
            best = min(best, time.perf_counter() - start)
        return 2 * self.src.nbytes / best


def timed(fn, args, reps: int, probe: CopyProbe):
    """(median wall ms of ``fn(*args)``, median copy bandwidth, median process CPU ms).

    The machine is shared, so its bandwidth drifts: each kernel call is paired with a copy
    measurement taken right after it. CPU ms (all threads of this process) well below
    wall ms × threads means the kernel's threads were waiting for a CPU, not working."""
    fn(*args).asnumpy()  # compile + warm-up; graph-mode calls return once the result is ready
    times, cpu, bandwidths = [], [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(*args).asnumpy()   # zero-copy on CPU: only a completion point
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        bandwidths.append(probe.bandwidth())
    return 1e3 * statistics.median(times), statistics.median(bandwidths), 1e3 * statistics.median(cpu)


def softmax_inputs(n: int, dtype, rng):
    queries = max(1, n // (HEADS * KEYS))
    scores = rng.standard_normal((1, HEADS, queries, KEYS)).astype(dtype)
    mask = np.tril(np.ones((queries, KEYS), np.float32), k=KEYS - queries)[None, None]
    return scores, mask


def bench_size(n: int, dtype: str, reps: int, backward: bool, rng) -> list:
    np_dtype = np.dtype(dtype)
    itemsize = np_dtype.itemsize
    probe = CopyProbe(n * itemsize)
    rows = []

    def row(op, fused, builtin_ms, nbytes):
        fused_ms, bandwidth, cpu_ms = fused
        bound_ms = 1e3 * nbytes / bandwidth
        rows.append({"op": op, "dtype": dtype, "elements": n, "fused_ms": fused_ms, "fused_cpu_ms": cpu_ms,
                     "builtin_ms": builtin_ms,
                     "speedup": builtin_ms / fused_ms if builtin_ms else None, "bytes": nbytes,
                     "copy_GBps": bandwidth / 1e9, "bound_ms": bound_ms, "fused_over_bound": fused_ms / bound_ms})

    x = ms.Tensor(rng.standard_normal(n).astype(np_dtype) * 3)
    gelu_fused = timed(Call(FastGelu(fused="on")), (x,), reps, probe)
    gelu_builtin = timed(Call(FastGelu(fused="off")), (x,), reps, probe)[0]
    row("FastGELU fwd", gelu_fused, gelu_builtin, 2 * n * itemsize)
    if backward:
        kernel = fused_fast_gelu("on")
        dy = ms.Tensor(rng.standard_normal(n).astype(np_dtype))
        fused_bwd = timed(Call(kernel.backward), (x, dy), reps, probe)
        builtin_bwd = timed(Call(FastGeLUGrad()), (dy, x), reps, probe)[0]
        row("FastGELU bwd", fused_bwd, builtin_bwd, 3 * n * itemsize)
    del x

    scores, mask = softmax_inputs(n, np_dtype, rng)
    scores_t, mask_t = ms.Tensor(scores), ms.Tensor(mask)
    sm_fused = timed(Call(MaskedSoftmax(SCALE, fused="on")), (scores_t, mask_t), reps, probe)
    sm_builtin = timed(Call(MaskedSoftmax(SCALE, fused="off")), (scores_t, mask_t), reps, probe)[0]
    row("MaskedSoftmax fwd", sm_fused, sm_builtin, 2 * scores.nbytes + mask.nbytes)
    if backward:
        kernel = fused_masked_softmax("on")
        scale = ms.Tensor([SCALE], ms.float32)
        y = kernel.forward(scores_t, mask_t, scale)
        dy = ms.Tensor(rng.standard_normal(scores.shape).astype(np_dtype))
        row("MaskedSoftmax bwd", timed(Call(kernel.backward), (y, dy, scale), reps, probe), None,
            3 * scores.nbytes)
    return rows


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def print_table(rows) -> None:
    head = (f"{'op':18s} {'dtype':8s} {'elements':>10s} {'fused ms':>9s} {'(CPU ms)':>9s} {'builtin ms':>10s} "
            f"{'speedup':>8s} {'copy GB/s':>9s} {'bound ms':>9s} {'fused/bound':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        builtin = f"{r['builtin_ms']:10.2f}" if r["builtin_ms"] else f"{'-':>10s}"
        speedup = f"{r['speedup']:7.1f}x" if r["speedup"] else f"{'-':>8s}"
        print(f"{r['op']:18s} {r['dtype']:8s} {r['elements']:>10d} {r['fused_ms']:9.2f} {r['fused_cpu_ms']:9.2f} "
              f"{builtin} {speedup} {r['copy_GBps']:9.1f} {r['bound_ms']:9.2f} {r['fused_over_bound']:10.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[1 << 20, 1 << 22, 1 << 24, 1 << 26],
                        help="element counts (suffixes K/M/G allowed; default 1M 4M 16M 64M)")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float16"], default=["float32"],
                        help="tensor dtypes (default float32; the built-in FP16 softmax is very slow on CPU)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per measurement (median reported)")
    parser.add_argument("--backward", action="store_true", help="also time the backward kernels")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    rows = []
    jobs = [(d, n) for d in args.dtypes for n in args.sizes]
    for dtype, n in tqdm(jobs, desc="benchmark", unit="size"):
        rows += bench_size(n, dtype, args.reps, args.backward, rng)
    print_table(rows)
    machine = {"cpu": cpu_model(), "threads": len(os.sched_getaffinity(0)),
               "mindspore": ms.__version__, "kernels": kernel_build.manifest()}
    print(f"\nmachine: {machine['cpu']}, {machine['threads']} threads, MindSpore {machine['mindspore']}; "
          "bound = bytes moved / measured copy bandwidth")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
