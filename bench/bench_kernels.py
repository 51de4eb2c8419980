"""Fused CPU kernels against MindSpore's built-in operators and this machine's memory bandwidth.

For each size (elements of the activation / of the attention scores) and dtype it times
(median of ``--reps`` calls after a warm-up call):

- FastGELU forward: the fused kernel vs ``ops.FastGeLU``;
- masked softmax forward: the fused kernel vs the composed built-ins of ``MaskedSoftmax(fused="off")``
  (Cast, Mul, Sub, Mul, Sub, Softmax, Cast), scores [1, 8, S, 2048] with a [1, 1, S, 2048] FP32 mask;
- with ``--backward``: the fused backward kernels, and FastGELU's built-in ``FastGeLUGrad``.

"kernel ms" is the bare kernel (its aot entry point called on NumPy buffers); "call ms" and
"builtin ms" are one-operator graph-mode MindSpore calls (the framework's per-call cost included),
so the speedup compares like with like.

The bandwidth bound of a kernel is the bytes it must move (each input read once, the output
written once) divided by the measured copy bandwidth (2 × bytes / time of ``np.copyto`` between
two pre-touched arrays of the output's size, the best over 1..#CPU threads, measured right after
each timed call because a shared machine's bandwidth drifts), i.e. the time of a perfect
streaming kernel. MindSpore's per-call cost (graph launch ~0.5 ms, plus input/output handling that
grows with size) is in "call ms" only. Targets: ≥ 5× the built-in FastGeLU, within 2× of the bound for large
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
from codegeex_ms.ops.kernel_build import call_aot  # noqa: E402

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


def timed_direct(lib, symbol: str, arrays, reps: int, probe: CopyProbe):
    """Like ``timed`` for the kernel alone: its aot entry point called on NumPy buffers."""
    def run():
        status = call_aot(lib, symbol, arrays)
        if status != 0:
            raise RuntimeError(f"{symbol} returned status {status}")
    run()
    times, cpu, bandwidths = [], [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
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
    probe = CopyProbe(n * np_dtype.itemsize)
    gelu_lib, softmax_lib = kernel_build.locate("fast_gelu", "CPU"), kernel_build.locate("masked_softmax", "CPU")
    rows = []

    def row(op, direct, call, builtin_ms, nbytes):
        """direct/call: (ms, copy bandwidth, CPU ms) of the bare kernel / the MindSpore call."""
        bound_ms = 1e3 * nbytes / statistics.median([direct[1], call[1]])
        rows.append({"op": op, "dtype": dtype, "elements": n, "kernel_ms": direct[0], "kernel_cpu_ms": direct[2],
                     "call_ms": call[0], "builtin_ms": builtin_ms,
                     "speedup": builtin_ms / call[0] if builtin_ms else None, "bytes": nbytes,
                     "copy_GBps": statistics.median([direct[1], call[1]]) / 1e9, "bound_ms": bound_ms,
                     "kernel_over_bound": direct[0] / bound_ms, "call_over_bound": call[0] / bound_ms})

    x = (rng.standard_normal(n) * 3).astype(np_dtype)
    dy = rng.standard_normal(n).astype(np_dtype)
    out = np.empty_like(x)
    x_t = ms.Tensor(x)
    row("FastGELU fwd", timed_direct(gelu_lib, "FastGeluForward", [x, out], reps, probe),
        timed(Call(FastGelu(fused="on")), (x_t,), reps, probe),
        timed(Call(FastGelu(fused="off")), (x_t,), reps, probe)[0], 2 * x.nbytes)
    if backward:
        dy_t = ms.Tensor(dy)
        row("FastGELU bwd", timed_direct(gelu_lib, "FastGeluBackward", [x, dy, out], reps, probe),
            timed(Call(fused_fast_gelu("on").backward), (x_t, dy_t), reps, probe),
            timed(Call(FastGeLUGrad()), (dy_t, x_t), reps, probe)[0], 3 * x.nbytes)
    del x, dy, out, x_t

    scores, mask = softmax_inputs(n, np_dtype, rng)
    scale = np.array([SCALE], np.float32)
    probs = np.empty_like(scores)
    scores_t, mask_t, scale_t = ms.Tensor(scores), ms.Tensor(mask), ms.Tensor(scale)
    row("MaskedSoftmax fwd", timed_direct(softmax_lib, "MaskedSoftmaxForward", [scores, mask, scale, probs], reps, probe),
        timed(Call(MaskedSoftmax(SCALE, fused="on")), (scores_t, mask_t), reps, probe),
        timed(Call(MaskedSoftmax(SCALE, fused="off")), (scores_t, mask_t), reps, probe)[0],
        2 * scores.nbytes + mask.nbytes)
    if backward:
        grad = rng.standard_normal(scores.shape).astype(np_dtype)
        dx = np.empty_like(scores)
        row("MaskedSoftmax bwd", timed_direct(softmax_lib, "MaskedSoftmaxBackward", [probs, grad, scale, dx], reps, probe),
            timed(Call(fused_masked_softmax("on").backward), (ms.Tensor(probs), ms.Tensor(grad), scale_t), reps, probe),
            None, 3 * scores.nbytes)
    return rows


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        return next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def print_table(rows) -> None:
    head = (f"{'op':18s} {'dtype':8s} {'elements':>9s} {'kernel ms':>9s} {'(CPU ms)':>8s} {'call ms':>8s} "
            f"{'builtin ms':>10s} {'speedup':>7s} {'copy GB/s':>9s} {'bound ms':>8s} {'kernel/bound':>12s} "
            f"{'call/bound':>10s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        builtin = f"{r['builtin_ms']:10.2f}" if r["builtin_ms"] else f"{'-':>10s}"
        speedup = f"{r['speedup']:6.1f}x" if r["speedup"] else f"{'-':>7s}"
        print(f"{r['op']:18s} {r['dtype']:8s} {r['elements']:>9d} {r['kernel_ms']:9.2f} {r['kernel_cpu_ms']:8.2f} "
              f"{r['call_ms']:8.2f} {builtin} {speedup} {r['copy_GBps']:9.1f} {r['bound_ms']:8.2f} "
              f"{r['kernel_over_bound']:11.2f}x {r['call_over_bound']:9.2f}x")


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
