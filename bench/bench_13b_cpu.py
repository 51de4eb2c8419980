"""CodeGeeX-13B end to end on one CPU machine: synthetic release -> FP16 -> INT8 -> generate.

Steps (each in a fresh child process; time and peak RSS per step):

- ``write``: the synthetic release ``codegeex_13b.pt`` (``codegeex_ms.checkpoint.synthetic``,
  release layout, FP16, 12,873,943,040 parameters);
- ``convert``: ``.pt`` -> ``codegeex_13b_fp16.safetensors`` (``codegeex_ms.convert``);
- ``verify``: every tensor of the converted file equals the ``.pt``'s bit for bit, streaming
  (``convert.verify_conversion``); the ``.pt`` is deleted afterwards unless ``--keep``;
- ``quantize``: FP16 -> ``codegeex_13b_int8.safetensors`` (W8A16, ``codegeex_ms.quantize``); the
  FP16 file is deleted afterwards unless ``--keep``;
- ``generate``: config ``infer_13b_cpu_int8`` (INT8 linears, FP16 embeddings, FP32 compute,
  fused W8A16 kernel and FP16-weight head kernel, PyNative with blocking launches, the decode
  step alone compiled as one graph (``SlotKVCache(jit_decode=True)``; ``BENCH_JIT_DECODE=0`` runs
  it op by op) — graph mode on CPU keeps every intermediate of a compiled forward
  alive, +0.13 GiB per layer; ``BENCH_MODE=graph`` to measure it anyway): measure the memory bandwidth (NumPy streaming read: best of
  several float32 GEMVs over a 512 MiB matrix, which read it once), map the INT8 file
  (``model.quant.load_quantized_mmap``: the parameters are views of the file's pages, one copy),
  prefill a 128-token prompt, decode 32 tokens greedily. Prints load time, prefill time, ms per
  token beside the bound (bytes one decode step reads ÷ bandwidth) and beside ``plan``'s
  prediction for the same config (``--device cpu``: peak memory, and ms/token at the measured
  bandwidth). Memory is also split by kind (``/proc/self/smaps_rollup``: anonymous vs
  file-backed resident bytes) after loading, after the prefill and at the end, so a copy of the
  mapped weights would show as anonymous memory. ms/token is the median interval between new
  tokens after the first (in graph mode the first holds the decode graph's compilation);
  decoding stops early after 25 minutes (reported as finish reason "time budget").

Peak RSS is the child's ``VmHWM`` (``/proc/self/status``, which the kernel resets at exec, so the
parent's memory does not leak into it) and, as a cross-check, ``ru_maxrss`` from ``wait4``.
Results are merged into ``--json`` (default ``<workdir>/bench_13b_cpu.json``) step by step, so
the steps can run one at a time.

    python bench/bench_13b_cpu.py --workdir /big/disk/cg13b --steps write,convert,verify,quantize
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = ("write", "convert", "verify", "quantize", "generate")
CONFIG = "infer_13b_cpu_int8"
PROMPT_TOKENS, NEW_TOKENS = 128, 32
FILES = {"pt": "codegeex_13b.pt", "fp16": "codegeex_13b_fp16.safetensors",
         "int8": "codegeex_13b_int8.safetensors"}
GB = 1e9
GIB = 2 ** 30


def peak_rss_self() -> int:
    """This process's peak resident set size in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM missing from /proc/self/status")


def run_step(step: str, workdir: Path, seed: int, overrides=()) -> dict:
    """Run ``step`` in this process; return what it measured besides time and memory."""
    sys.path.insert(0, str(REPO_ROOT))
    files = {k: workdir / v for k, v in FILES.items()}
    if step == "write":
        from codegeex_ms.checkpoint.layout import CODEGEEX_13B  # pylint: disable=import-outside-toplevel
        from codegeex_ms.checkpoint.synthetic import write_synthetic_release  # pylint: disable=import-outside-toplevel
        params = write_synthetic_release(files["pt"], CODEGEEX_13B, seed)
        return {"parameters": params, "file_bytes": files["pt"].stat().st_size}
    if step == "convert":
        from codegeex_ms.convert import convert_checkpoint  # pylint: disable=import-outside-toplevel
        convert_checkpoint(files["pt"], files["fp16"])
        return {"file_bytes": files["fp16"].stat().st_size}
    if step == "verify":
        from codegeex_ms.convert import verify_conversion  # pylint: disable=import-outside-toplevel
        return verify_conversion(files["pt"], files["fp16"])
    if step == "quantize":
        from codegeex_ms.quantize import quantize_checkpoint  # pylint: disable=import-outside-toplevel
        return quantize_checkpoint(files["fp16"], files["int8"])
    if step == "generate":
        return generate(files["int8"], seed, overrides)
    raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


def memory_kinds() -> dict:
    """This process's resident bytes by kind (``/proc/self/smaps_rollup``): ``rss``,
    ``anonymous`` (heap, framework buffers: private copies) and ``file`` (the rest: mapped files
    such as the weights, and libraries)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss": fields["Rss"], "anonymous": fields["Anonymous"],
            "file": fields["Rss"] - fields["Anonymous"]}


def stream_read_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes/s of a NumPy streaming read: best of ``repeats`` float32 GEMVs ``A @ v`` over an
    ``nbytes`` matrix (BLAS reads A once, on all threads; A is 16x the last-level cache)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    a = np.ones((nbytes // 4 // 4096, 4096), np.float32)
    v = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ v
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best


class _IdTokenizer:
    """Token ids as text; ``eod_id`` -1 is never produced, so every run makes all its tokens."""

    eod_id = -1

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def generate(int8_path: Path, seed: int, overrides=(), budget_s: float = None) -> dict:
    """The ``generate`` step (see the module docstring); ``overrides``: ``--set`` items for the
    config. Decoding stops early (finish reason "time budget") once ``budget_s`` (default
    $BENCH_BUDGET_S, else 25 minutes) have passed since generation started."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    import mindspore as ms
    from codegeex_ms.config import load_config
    from codegeex_ms.inference.sampling import SamplingParams
    from codegeex_ms.inference.scheduler import Request, SlotScheduler
    from codegeex_ms.model.kv_cache import SlotKVCache
    from codegeex_ms.model.build import build_model
    from codegeex_ms.model.quant import weight_bytes
    from codegeex_ms.budget.inference import build_inference_plan
    from codegeex_ms.model.quant import load_quantized_mmap

    budget_s = budget_s or float(os.environ.get("BENCH_BUDGET_S", 25 * 60))
    bandwidth = stream_read_bandwidth()
    mode = os.environ.get("BENCH_MODE", "pynative")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    if mode != "graph":
        # each op runs on the calling thread: no hand-off to a launch thread per op, which on a
        # busy 2-core machine waits for a time slice (measured: bias add 8 ms -> 0.5 ms)
        ms.runtime.launch_blocking()
    from codegeex_ms.config import CONFIG_DIR
    cfg = load_config(CONFIG_DIR / f"{CONFIG}.yaml", tuple(overrides))
    start = time.perf_counter()
    net = build_model(cfg.model, allocate=False)
    mapped = load_quantized_mmap(net, int8_path)
    load_s = time.perf_counter() - start
    memory = {"loaded": memory_kinds()}
    sizes = weight_bytes(net)
    # one decode step reads every weight once except the two position tables (one row each)
    positions = 2 * cfg.model.max_position_embeddings * cfg.model.hidden_size * 2
    step_bytes = sizes["total"] - positions
    net.set_train(False)
    # the generator's greedy path (a slot scheduler over a one-row pool, cache length 160), built
    # here so the pool's decode step can run as one compiled graph (PyNative otherwise)
    jit_decode = mode != "graph" and os.environ.get("BENCH_JIT_DECODE", "1") == "1"
    cache = SlotKVCache(net, 1, PROMPT_TOKENS + NEW_TOKENS, cfg.model.eod_token_id, jit_decode=jit_decode)
    sched = SlotScheduler(cache, _IdTokenizer(), eod=_IdTokenizer.eod_id, real_vocab_size=cfg.model.real_vocab_size)
    prompt = np.random.default_rng(seed).integers(0, cfg.model.real_vocab_size, PROMPT_TOKENS).tolist()
    stamps = []   # time of each new token's text: per-step intervals, the compile-free decode rate

    def on_text(_row, _text):
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            memory["prefilled"] = memory_kinds()

    start = time.perf_counter()
    request = Request(prompt, NEW_TOKENS, SamplingParams(temperature=0.0), on_text=on_text,
                      should_stop=lambda _i: "time budget" if time.perf_counter() - start > budget_s else None)
    sched.submit(request)
    sched.run()
    total_s = time.perf_counter() - start
    memory["end"] = memory_kinds()
    timing, out = sched.stats, request.results
    steps = np.diff(stamps[1:])   # the first interval holds the decode graph's compilation
    plan = build_inference_plan(cfg, capacity_gib=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB,
                                device="cpu")
    ms_per_token = 1e3 * float(np.median(steps)) if len(steps) else float("nan")
    return {"config": CONFIG, "mode": mode, "jit_decode": jit_decode, "overrides": list(overrides), "memory": memory,
            "bandwidth_bytes_s": bandwidth, "load_s": load_s, "mapped_bytes": mapped,
            "weight_bytes": sizes, "step_bytes": step_bytes, "prefill_tokens": PROMPT_TOKENS,
            "prefill_s": timing.prefill_s, "decode_steps": timing.decode_steps, "decode_s": timing.decode_s,
            "ms_per_token": ms_per_token, "ms_per_token_mean_incl_compile":
            1e3 * timing.decode_s / max(timing.decode_steps, 1), "finish_reason": out[0].finish_reason, "bound_ms_per_token": 1e3 * step_bytes / bandwidth,
            "generate_s": total_s, "new_tokens": len(out[0].token_ids),
            "plan_peak_bytes": plan.get("peak_bytes"),
            "plan_ms_per_token": (1e3 * plan["step_bytes"] / bandwidth) if "step_bytes" in plan else None}


def child_main(step: str, workdir: Path, seed: int, overrides) -> None:
    """Child side: run the step and print one ``RESULT <json>`` line."""
    start = time.perf_counter()
    out = run_step(step, workdir, seed, overrides)
    out.update(wall_s=time.perf_counter() - start, peak_rss_bytes=peak_rss_self())
    print("RESULT " + json.dumps(out), flush=True)


def measure(step: str, workdir: Path, seed: int, overrides=()) -> dict:
    """Run ``step`` in a child process; its result plus ``ru_maxrss_bytes`` from ``wait4``."""
    env = {**os.environ, "GLOG_v": os.environ.get("GLOG_v", "3")}
    proc = subprocess.Popen([sys.executable, __file__, "--child", step, "--workdir", str(workdir),
                             "--seed", str(seed)] + [f"--set={o}" for o in overrides], stdout=subprocess.PIPE, text=True, env=env)
    lines = proc.stdout.read().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"step {step} failed (exit {proc.returncode}); see its error above")
    return {**results[-1], "ru_maxrss_bytes": usage.ru_maxrss * 1024}


def cleanup(step: str, workdir: Path) -> None:
    """Delete the intermediate a finished step no longer needs."""
    victim = {"verify": "pt", "quantize": "fp16"}.get(step)
    if victim:
        for path in (workdir / FILES[victim], workdir / (FILES[victim] + ".manifest.json"),
                     workdir / (FILES[victim] + ".verified.json")):
            path.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="directory for the checkpoints (needs ~52 GB free at the peak)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the .pt and FP16 intermediates")
    parser.add_argument("--json", type=Path, help="results file (default: <workdir>/bench_13b_cpu.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help=f"config override for the generate step (config {CONFIG})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.workdir, args.seed, args.overrides)
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {STEPS}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.workdir / "bench_13b_cpu.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    for step in steps:
        print(f"{step} ...", flush=True)
        results[step] = measure(step, args.workdir, args.seed, args.overrides)
        json_path.write_text(json.dumps(results, indent=1))
        if not args.keep:
            cleanup(step, args.workdir)
    print(f"{'step':<10} {'time s':>8} {'peak RSS GiB':>13} {'ru_maxrss GiB':>14}")
    for step, r in results.items():
        if "wall_s" in r and "peak_rss_bytes" in r:
            print(f"{step:<10} {r['wall_s']:8.1f} {r['peak_rss_bytes'] / GIB:13.2f} "
                  f"{r.get('ru_maxrss_bytes', 0) / GIB:14.2f}")
    gen = results.get("generate")
    if gen:
        print(f"generate: load {gen['load_s']:.1f} s ({gen['mapped_bytes'] / GB:.2f} GB mapped), prefill "
              f"{gen['prefill_tokens']} tokens {gen['prefill_s']:.1f} s, decode {gen['ms_per_token']:.0f} ms/token "
              f"over {gen['decode_steps']} steps; bound {gen['bound_ms_per_token']:.0f} ms/token "
              f"({gen['step_bytes'] / GB:.2f} GB / {gen['bandwidth_bytes_s'] / GB:.1f} GB/s), ratio "
              f"{gen['ms_per_token'] / gen['bound_ms_per_token']:.2f}; peak RSS "
              f"{gen['peak_rss_bytes'] / GIB:.2f} GiB, plan predicts "
              + (f"{gen['plan_peak_bytes'] / GIB:.2f} GiB" if gen.get("plan_peak_bytes") else "n/a")
              + (f" and {gen['plan_ms_per_token']:.0f} ms/token" if gen.get("plan_ms_per_token") else ""))
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
