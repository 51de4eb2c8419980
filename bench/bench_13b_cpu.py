"""CodeGeeX-13B end to end on one CPU machine: synthetic release -> FP16 -> INT8 -> generate.

Steps (each in a fresh child process; time and peak RSS per step):

- ``write``: the synthetic release ``codegeex_13b.pt`` (``codegeex_ms.checkpoint.synthetic``,
  release layout, FP16, 12,873,943,040 parameters);
- ``convert``: ``.pt`` -> ``codegeex_13b_fp16.safetensors`` (``codegeex_ms.convert``);
- ``verify``: every tensor of the converted file equals the ``.pt``'s bit for bit, streaming
  (``convert.verify_conversion``); the ``.pt`` is deleted afterwards unless ``--keep``;
- ``quantize``: FP16 -> ``codegeex_13b_int8.safetensors`` (W8A16, ``codegeex_ms.quantize``); the
  FP16 file is deleted afterwards unless ``--keep``;
- ``generate``: see ``bench/bench_13b_generate.py`` (load memory-mapped, prefill, decode).

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
STEPS = ("write", "convert", "verify", "quantize")
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


def run_step(step: str, workdir: Path, seed: int) -> dict:
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
    raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


def child_main(step: str, workdir: Path, seed: int) -> None:
    """Child side: run the step and print one ``RESULT <json>`` line."""
    start = time.perf_counter()
    out = run_step(step, workdir, seed)
    out.update(wall_s=time.perf_counter() - start, peak_rss_bytes=peak_rss_self())
    print("RESULT " + json.dumps(out), flush=True)


def measure(step: str, workdir: Path, seed: int) -> dict:
    """Run ``step`` in a child process; its result plus ``ru_maxrss_bytes`` from ``wait4``."""
    env = {**os.environ, "GLOG_v": os.environ.get("GLOG_v", "3")}
    proc = subprocess.Popen([sys.executable, __file__, "--child", step, "--workdir", str(workdir),
                             "--seed", str(seed)], stdout=subprocess.PIPE, text=True, env=env)
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
        (workdir / FILES[victim]).unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workdir", type=Path, required=True,
                        help="directory for the checkpoints (needs ~52 GB free at the peak)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the .pt and FP16 intermediates")
    parser.add_argument("--json", type=Path, help="results file (default: <workdir>/bench_13b_cpu.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.workdir, args.seed)
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
        results[step] = measure(step, args.workdir, args.seed)
        json_path.write_text(json.dumps(results, indent=1))
        if not args.keep:
            cleanup(step, args.workdir)
    print(f"{'step':<10} {'time s':>8} {'peak RSS GiB':>13} {'ru_maxrss GiB':>14}")
    for step, r in results.items():
        if "wall_s" in r and "peak_rss_bytes" in r:
            print(f"{step:<10} {r['wall_s']:8.1f} {r['peak_rss_bytes'] / GIB:13.2f} "
                  f"{r.get('ru_maxrss_bytes', 0) / GIB:14.2f}")
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
