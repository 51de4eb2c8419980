"""Inference speed of CodeGeeX on this machine: prefill, KV-cache vs recompute decoding, FP32 vs INT8,
and decode time against the memory-bandwidth bound.

Two random-weight models with the real vocabulary (52224 rows): ``small`` (~20M parameters) and
``medium`` (~130M, GPT-2-small sized), graph mode, greedy decoding, batch 1 and 8, one prompt
length. For each model, weights (FP32 or INT8 W8A16) and batch:

- prefill: the generator's prefill of the prompts (tokens/s = batch × prompt / time; fresh random
  prompts every run, so no cached prefix is reused);
- decode, KV cache: the generator's incremental steps (ms per step; one step makes ``batch`` tokens;
  mean over a run's steps, best of ``--repeats`` runs). Both networks of a model stay loaded and
  their runs alternate (FP32, INT8, FP32, ...), so the INT8 / FP32 ratio printed under the table
  compares them under the same machine conditions;
- decode, recompute: a full forward over the whole prompt + new-token window at every step, as a
  cache-free static-shape decoder does (ms per step, a few steps);
- bound: the bytes of the weights one decode step reads (every parameter but the two position
  tables, of which a step reads one row each) ÷ the measured copy bandwidth; ratio = measured
  decode time / bound. The KV cache read per step is listed separately.

INT8 here is ``codegeex_ms.model.layers.Linear`` with ``weight_quant=int8`` and the default
``fused_kernels=auto``: on CPU its matmuls run the fused W8A16 kernel (``kernels/w8a16/cpu``),
which reads each int8 weight once and widens it in registers (1 byte per weight where FP32 reads
4); without it (``fused_kernels=off``) every step cast each int8 weight to an FP32 copy first.

Copy bandwidth: best of several NumPy copies of a 256 MiB array, counting bytes read + written
(STREAM "copy" convention). Compile time is excluded (one warm-up call per shape).
Weight memory: bytes of the parameters of the medium model built in FP16 and in INT8 (FP16
embeddings/LayerNorms/biases, FP32 row scales) with the process RSS growth when each is loaded,
and the 13B model's from ``codegeex_ms.plan``.

Kernels at 13B shapes (``--parts kernels``), side by side in one process:

- prefill (M = 128 rows, K x N of the 13B layers: 5120 x 5120 attention, 5120 x 20480 and
  20480 x 5120 MLP): MindSpore's FP32 ``MatMul(transpose_b=True)`` on FP32 weights, the fused
  W8A16 kernel on int8 weights and the FP16-weight kernel (``FloatWMatMul``) on FP16 weights, each
  the best of ``--kernel-repeats`` calls taken in turn (the machine may be shared); GFLOP/s =
  2·M·K·N / time, and the W8A16 kernel's fraction of MindSpore's.
- decode (M = 1 and 8): the W8A16 kernel on the 13B layer shapes and the FP16-weight kernel on
  the tied output head (52224 x 5120), cycling over enough weight copies to exceed twice the
  last-level cache, so every call reads its weights from memory: GB/s of weights read and the
  time over the bound (weight bytes ÷ copy bandwidth).

The kernels are called on NumPy arrays through their C entry points (``kernel_build.call_aot``,
~20 us per call, < 1 % here), MindSpore's MatMul through a graph-mode Cell.

    python bench/bench_inference.py [--json PATH] [--models small,medium] [--batches 1,8]
                                    [--parts models,kernels]
"""

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402

from codegeex_ms.env import runtime  # noqa: E402
from codegeex_ms.checkpoint.layout import model_parameters  # noqa: E402
from codegeex_ms.config import load_config  # noqa: E402
from codegeex_ms.inference.generator import Generator  # noqa: E402
from codegeex_ms.model.build import build_model  # noqa: E402
from codegeex_ms.data.masks import causal_mask, positions  # noqa: E402
from codegeex_ms.model.quant import NUMPY_DTYPES, weight_bytes  # noqa: E402
from codegeex_ms.ops import kernel_build  # noqa: E402
from codegeex_ms.budget.training import build_plan  # noqa: E402
from codegeex_ms.model.quant import quantize_into  # noqa: E402

MODELS = {   # model.* overrides of the default (13B) config; vocabulary and FFN ratio as in 13B
    "small": {"hidden_size": 256, "num_layers": 7, "num_heads": 4, "ffn_hidden_size": 1024,
              "max_position_embeddings": 512},
    "medium": {"hidden_size": 768, "num_layers": 11, "num_heads": 12, "ffn_hidden_size": 3072,
               "max_position_embeddings": 1024},
}
POSITION_TABLES = ("language_model.embedding.position_embeddings.weight",
                   "language_model.topQueryEmbedding.top_query_embeddings.weight")
MB = 1e6
PREFILL_SHAPES = ((128, 5120, 5120), (128, 5120, 20480), (128, 20480, 5120))   # M, K, N (13B layers)
DECODE_SHAPES = ((5120, 5120), (5120, 20480), (20480, 5120))                  # K, N of the INT8 layers
HEAD_SHAPE = (5120, 52224)                                                    # K, N of the FP16 tied head


class IdTokenizer:
    """Token ids as text; ``eod_id`` -1 is never produced, so every run makes all its tokens."""

    eod_id = -1

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def model_config(name, **extra):
    items = {**MODELS[name], "dropout": 0.0, **extra}
    overrides = tuple(f"model.{k}={v}" for k, v in items.items())
    return load_config(None, overrides + (f"train.seq_length={items['max_position_embeddings']}",)).model


def copy_bandwidth(nbytes=256 << 20, repeats=5) -> float:
    """Bytes/s of a NumPy array copy, counting read + write (best of ``repeats``)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def step_read_bytes(net) -> int:
    """Bytes of the parameters one decode step reads (all but the position tables)."""
    counts = weight_bytes(net)["total"]
    params = dict(net.parameters_and_names())
    return counts - sum(params[n].size * NUMPY_DTYPES[params[n].dtype].itemsize for n in POSITION_TABLES)


def recompute_decode(net, prompts, new_tokens, steps):
    """Greedy decoding by a full forward over the [B, prompt + new_tokens] window at each step.
    Returns (best ms per step over ``steps`` steps after a warm-up step, tokens of all steps)."""
    b, p = prompts.shape
    window = p + new_tokens
    ids = np.zeros((b, window), np.int32)
    ids[:, :p] = prompts
    pos, mask = ms.Tensor(positions(b, window)), ms.Tensor(causal_mask(b, window))
    real = net.config.real_vocab_size
    times = []
    for t in range(steps + 1):
        t0 = time.perf_counter()
        logits = net(ms.Tensor(ids), pos, mask).asnumpy()[:, p + t - 1, :real]
        ids[:, p + t] = logits.argmax(-1)
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times[1:]), ids[:, p:p + steps + 1]


def bench_networks(name, nets, args, bandwidth):
    """Rows for model ``name`` with each of ``nets`` (weights label -> network) at every batch size
    of ``args``. The networks' generator runs are interleaved (one run of each in turn, ``repeats``
    rounds, best kept), so FP32 and INT8 are timed under the same machine conditions."""
    rows = []
    cfg = next(iter(nets.values())).config
    for batch in args.batches:
        rng = np.random.default_rng(batch)

        def draw():
            return [list(r) for r in rng.integers(0, cfg.real_vocab_size, (batch, args.prompt)).astype(np.int32)]

        gens = {label: Generator(net, IdTokenizer()) for label, net in nets.items()}
        for gen in gens.values():
            gen.generate(draw(), 2)          # compile prefill + decode
        prefill_s = dict.fromkeys(nets, float("inf"))
        decode_ms = dict.fromkeys(nets, float("inf"))
        outs = {}
        for _ in range(args.repeats):
            prompts = draw()    # new prompts every round: a repeated prompt would reuse its cached prefix
            for label, gen in gens.items():
                outs[label] = gen.generate(prompts, args.new_tokens)
                t = gen.timing
                prefill_s[label] = min(prefill_s[label], t.prefill_s)
                decode_ms[label] = min(decode_ms[label], 1e3 * t.decode_s / t.decode_steps)
        for label, net in nets.items():
            cached = np.array([c.token_ids for c in outs[label]])
            rc_ms, rc_tokens = recompute_decode(net, np.array(prompts), args.new_tokens, args.recompute_steps)
            cache_len = gens[label].timing.compiles[-1][1]          # the decoder's (batch, cache length)
            kv = 2 * (cfg.num_layers + 1) * batch * cache_len * cfg.hidden_size * 4
            read = step_read_bytes(net)
            bound_ms = 1e3 * read / bandwidth
            rows.append({
                "model": name, "weights": label, "batch": batch, "prompt": args.prompt,
                "new_tokens": args.new_tokens, "prefill_tokens_per_s": batch * args.prompt / prefill_s[label],
                "decode_ms_per_step": decode_ms[label], "decode_tokens_per_s": 1e3 * batch / decode_ms[label],
                "recompute_ms_per_step": rc_ms, "recompute_window": args.prompt + args.new_tokens,
                "recompute_tokens_agree": bool((rc_tokens == cached[:, :rc_tokens.shape[1]]).all()),
                "step_weight_bytes": read, "kv_cache_bytes_per_step": kv,
                "bound_ms": bound_ms, "decode_over_bound": decode_ms[label] / bound_ms})
            print(f"  {name} {label} batch {batch}: prefill {rows[-1]['prefill_tokens_per_s']:.0f} tok/s, "
                  f"decode {decode_ms[label]:.1f} ms/step (cache) vs {rc_ms:.1f} (recompute)", flush=True)
    return rows


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache sysfs reports (0 if none)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes, default=0)


def best_of(fns, repeats):
    """Best seconds of each function over ``repeats`` rounds, calling them in turn in each round."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


class FloatMatMul(ms.nn.Cell):
    """MindSpore's FP32 ``x · wᵀ`` (the FP32 Linear's matmul)."""

    def __init__(self):
        super().__init__()
        self.matmul = ms.ops.MatMul(transpose_b=True)

    def construct(self, x, w):
        return self.matmul(x, w)


def kernel_table(bandwidth, repeats):
    """Prefill and decode rows of the W8A16 / FP16-weight kernels (see the module docstring)."""
    lib = kernel_build.locate("w8a16_matmul", "CPU")
    isa_fn = ctypes.CDLL(lib).W8A16Isa
    isa_fn.restype = ctypes.c_char_p
    rng = np.random.default_rng(0)
    prefill, decode = [], []
    mm = FloatMatMul()
    for m, k, n in PREFILL_SHAPES:
        x = rng.standard_normal((m, k), np.float32)
        w32 = (0.02 * rng.standard_normal((n, k), np.float32))
        q = rng.integers(-127, 128, (n, k), dtype=np.int8)
        scale = np.full(n, 0.02 / 127, np.float32)
        w16 = w32.astype(np.float16)
        xt, wt = ms.Tensor(x), ms.Tensor(w32)
        y = np.empty((m, n), np.float32)
        fns = [lambda: mm(xt, wt).asnumpy(), lambda: kernel_build.call_aot(lib, "W8A16MatMul", [x, q, scale, y]),
               lambda: kernel_build.call_aot(lib, "FloatWMatMul", [x, w16, y])]
        for fn in fns:
            fn()                      # compile / warm up
        times = best_of(fns, repeats)
        flops = 2 * m * k * n
        prefill.append({"m": m, "k": k, "n": n, "mindspore_fp32_s": times[0], "w8a16_s": times[1],
                        "f16w_s": times[2], "mindspore_fp32_gflops": flops / times[0] / 1e9,
                        "w8a16_gflops": flops / times[1] / 1e9, "f16w_gflops": flops / times[2] / 1e9,
                        "w8a16_over_mindspore": times[0] / times[1]})
        print(f"  prefill {m}x{k}x{n}: MindSpore FP32 {prefill[-1]['mindspore_fp32_gflops']:.1f}, W8A16 "
              f"{prefill[-1]['w8a16_gflops']:.1f}, F16W {prefill[-1]['f16w_gflops']:.1f} GFLOP/s", flush=True)
        del x, w32, q, w16, xt, wt
        gc.collect()
    span = 2 * last_level_cache_bytes()
    cases = [("w8a16", k, n, np.int8) for k, n in DECODE_SHAPES] + [("f16w",) + HEAD_SHAPE + (np.float16,)]
    for kind, k, n, wtype in cases:
        nbytes = k * n * np.dtype(wtype).itemsize
        first = (rng.integers(-127, 128, (n, k), dtype=np.int8) if wtype == np.int8
                 else (0.02 * rng.standard_normal((n, k), np.float32)).astype(np.float16))
        copies = [first] + [first.copy() for _ in range(max(1, -(-span // nbytes)) - 1)]
        scale = np.full(n, 0.02 / 127, np.float32)
        for m in (1, 8):
            x = rng.standard_normal((m, k), np.float32)
            y = np.empty((m, n), np.float32)
            turn = iter(range(1 << 62))

            def call():
                w = copies[next(turn) % len(copies)]
                args = [x, w, scale, y] if kind == "w8a16" else [x, w, y]
                kernel_build.call_aot(lib, "W8A16MatMul" if kind == "w8a16" else "FloatWMatMul", args)

            call()
            seconds = best_of([call], max(repeats, 2 * len(copies)))[0]
            bound = nbytes / bandwidth
            decode.append({"kernel": kind, "m": m, "k": k, "n": n, "weight_bytes": nbytes, "copies": len(copies),
                           "seconds": seconds, "weight_gb_per_s": nbytes / seconds / 1e9, "bound_s": bound,
                           "over_bound": seconds / bound})
            print(f"  decode {kind} {m}x{k}x{n}: {1e3 * seconds:.2f} ms, {nbytes / seconds / 1e9:.2f} GB/s of "
                  f"weights, {seconds / bound:.2f}x the bound", flush=True)
        del copies, first
        gc.collect()
    return {"isa": isa_fn().decode(), "threads_env": os.environ.get("CODEGEEX_KERNEL_THREADS"),
            "prefill": prefill, "decode": decode}


def print_kernel_table(kernels, bandwidth):
    print(f"\nkernels at 13B shapes (fused library ISA {kernels['isa']}; copy bandwidth {bandwidth / 1e9:.2f} GB/s)")
    print(f"{'M':>5}{'K':>7}{'N':>7}{'MindSpore FP32 ms':>19}{'GFLOP/s':>9}{'W8A16 ms':>10}{'GFLOP/s':>9}"
          f"{'F16W ms':>9}{'GFLOP/s':>9}{'W8A16/MS':>10}")
    for r in kernels["prefill"]:
        print(f"{r['m']:>5}{r['k']:>7}{r['n']:>7}{1e3 * r['mindspore_fp32_s']:>19.1f}"
              f"{r['mindspore_fp32_gflops']:>9.1f}"
              f"{1e3 * r['w8a16_s']:>10.1f}{r['w8a16_gflops']:>9.1f}{1e3 * r['f16w_s']:>9.1f}{r['f16w_gflops']:>9.1f}"
              f"{r['w8a16_over_mindspore']:>9.2f}x")
    print(f"{'kernel':<7}{'M':>3}{'K':>7}{'N':>7}{'weights MB':>11}{'ms':>8}{'GB/s':>7}{'bound ms':>9}{'ms/bound':>9}")
    for r in kernels["decode"]:
        print(f"{r['kernel']:<7}{r['m']:>3}{r['k']:>7}{r['n']:>7}{r['weight_bytes'] / MB:>11.1f}"
              f"{1e3 * r['seconds']:>8.2f}{r['weight_gb_per_s']:>7.2f}{1e3 * r['bound_s']:>9.2f}{r['over_bound']:>9.2f}")


def weight_memory_child(name: str, kind: str) -> dict:
    """In a fresh process: build model ``name`` with FP16 (``kind="fp16"``) or INT8 weights
    (FP16 elsewhere), load random FP16 weights made one tensor at a time, and return the
    parameter bytes and the growth of the resident set."""
    extra = {"param_dtype": "float16"} if kind == "fp16" else {"param_dtype": "float16", "weight_quant": "int8"}
    net = build_model(model_config(name, **extra), allocate=False)
    shapes = [(n, p.shape) for n, p in
              build_model(model_config(name, param_dtype="float16"), allocate=False).parameters_and_names()]
    rng = np.random.default_rng(0)

    def source():
        for n, shape in shapes:
            yield n, (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float16)

    gc.collect()
    before = rss_bytes()
    if kind == "fp16":
        params = dict(net.parameters_and_names())
        for n, array in source():
            params[n].set_data(ms.Tensor.from_numpy(array))
    else:
        quantize_into(net, source())
    gc.collect()
    return {"parameter_bytes": weight_bytes(net)["total"], "rss_growth_bytes": rss_bytes() - before}


def weight_memory(name: str) -> dict:
    """FP16 vs INT8 weights of model ``name``, each measured in a fresh process (with glibc's
    mmap threshold fixed so that freed temporaries go back to the system)."""
    out = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    for kind in ("fp16", "int8"):
        proc = subprocess.run([sys.executable, __file__, "--weight-memory-child", f"{name}:{kind}"],
                              capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"weight memory of {name} {kind} failed:\n{proc.stderr[-3000:]}")
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,medium", help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens to generate (cached decode)")
    parser.add_argument("--recompute-steps", type=int, default=2,
                        help="timed steps of recompute decoding (after one warm-up step; best is kept)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed generator runs of each network, FP32 and INT8 in turn (best is kept)")
    parser.add_argument("--parts", default="models,kernels",
                        help="comma-separated: models (the model table), kernels (the 13B-shape kernel table)")
    parser.add_argument("--kernel-repeats", type=int, default=3, help="timed calls per kernel (best is kept)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--weight-memory-child", metavar="MODEL:KIND", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.weight_memory_child:
        print(json.dumps(weight_memory_child(*args.weight_memory_child.split(":"))))
        return 0
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    parts = set(args.parts.split(","))
    if not parts or parts - {"models", "kernels"}:
        parser.error(f"--parts {args.parts!r}: choose from models, kernels")
    if "models" not in parts:
        models = []

    runtime.setup("graph", seed=0)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s (NumPy, read + write)", flush=True)
    rows, sizes, memory = [], {}, {}
    start = time.perf_counter()
    kernels = kernel_table(bandwidth, args.kernel_repeats) if "kernels" in parts else None
    for name in models:
        net = build_model(model_config(name))       # N(0, 0.02) weights: the pre-training init
        net.set_train(False)
        sizes[name] = {"parameters": model_parameters(net.config), **MODELS[name]}
        net8 = build_model(dataclasses.replace(net.config, weight_quant="int8"), allocate=False)
        quantize_into(net8, ((n, p.asnumpy()) for n, p in net.parameters_and_names()))
        net8.set_train(False)
        rows += bench_networks(name, {"fp32": net, "int8": net8}, args, bandwidth)
        del net, net8
        gc.collect()
    if models:
        memory = {models[-1]: weight_memory(models[-1])}
    plan13 = build_plan(load_config(str(REPO_ROOT / "ascend_configs" / "infer_13b_single_npu.yaml")))["inference"]
    elapsed = time.perf_counter() - start

    print(f"\nCodeGeeX inference, graph mode, {platform.machine()} {os.cpu_count()} cores, MindSpore "
          f"{ms.__version__}; prompt {args.prompt}, {args.new_tokens} new tokens, greedy; copy bandwidth "
          f"{bandwidth / 1e9:.2f} GB/s")
    for name in models:
        print(f"  {name}: {sizes[name]['parameters'] / 1e6:.1f}M parameters ({MODELS[name]})")
    if kernels:
        print_kernel_table(kernels, bandwidth)
    if rows:
        head = (f"{'model':<7}{'weights':<8}{'batch':>5}{'prefill tok/s':>14}{'decode ms/step':>15}"
                f"{'decode tok/s':>13}{'recompute ms/step':>18}{'cache speedup':>14}{'weights MB':>11}"
                f"{'bound ms':>9}{'decode/bound':>13}{'KV MB':>7}")
        print(head)
        for r in rows:
            print(f"{r['model']:<7}{r['weights']:<8}{r['batch']:>5}{r['prefill_tokens_per_s']:>14.0f}"
                  f"{r['decode_ms_per_step']:>15.2f}{r['decode_tokens_per_s']:>13.1f}"
                  f"{r['recompute_ms_per_step']:>18.1f}"
                  f"{r['recompute_ms_per_step'] / r['decode_ms_per_step']:>13.1f}x{r['step_weight_bytes'] / MB:>11.1f}"
                  f"{r['bound_ms']:>9.2f}{r['decode_over_bound']:>13.1f}{r['kv_cache_bytes_per_step'] / MB:>7.1f}")
        fp32 = {(r["model"], r["batch"]): r["decode_ms_per_step"] for r in rows if r["weights"] == "fp32"}
        print("INT8 / FP32 decode ms per step (interleaved runs): " + ", ".join(
            f"{r['model']} b{r['batch']} {r['decode_ms_per_step'] / fp32[r['model'], r['batch']]:.2f}"
            for r in rows if r["weights"] == "int8"))
        if not all(r["recompute_tokens_agree"] for r in rows):
            print("note: recompute and cached decoding chose different tokens in:",
                  [(r["model"], r["weights"], r["batch"]) for r in rows if not r["recompute_tokens_agree"]])
    for name, mem in memory.items():
        f16, i8 = mem["fp16"], mem["int8"]
        print(f"\nweight memory, {name}: FP16 {f16['parameter_bytes'] / MB:.1f} MB (RSS +"
              f"{f16['rss_growth_bytes'] / MB:.1f} MB), INT8 {i8['parameter_bytes'] / MB:.1f} MB (RSS +"
              f"{i8['rss_growth_bytes'] / MB:.1f} MB): ratio {i8['parameter_bytes'] / f16['parameter_bytes']:.3f}")
    print(f"weight memory, 13B (codegeex_ms.plan): FP16 {plan13['weights_fp16'] / 1e9:.2f} GB, INT8 "
          f"{plan13['weights_int8_fp32_scales'] / 1e9:.2f} GB (FP32 row scales; FP16 scales would save "
          f"{(plan13['weights_int8_fp32_scales'] - plan13['weights_int8_fp16_scales']) / 1e6:.1f} MB), "
          f"ratio {plan13['weights_int8_fp32_scales'] / plan13['weights_fp16']:.3f}")
    print(f"benchmark time {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "mindspore": ms.__version__},
            "copy_bandwidth_bytes_per_s": bandwidth, "models": sizes, "rows": rows,
            "weight_memory": memory, "weight_memory_13b": plan13, "kernels": kernels, "seconds": elapsed},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
