"""Throughput and latency of ``python -m codegeex_ms.serve`` under concurrent mixed load: the
continuous-batching server side by side with the server of an earlier commit (``--baseline-ref``,
default the last commit before the slot scheduler), in one run.

Each variant is started on a free localhost port with the same tiny random-weight model (or
``--checkpoint``) and driven by a closed-loop async load generator: ``--concurrency`` clients
each send one streamed ``/v1/completions`` request, read it to the end, and send the next, until
``--requests`` answers came back. Prompts and ``max_tokens`` are mixed (request i: prompt
``i % 6``, max_tokens from ``--max-tokens-mix`` by a seeded draw), the same sequence for every
variant. A warm-up load of the same kind runs first, so compiling is not measured.

Reported per variant: requests/s, completion tokens/s (from the server's counters), latency
p50/p99/max (sending to the last event), time to first token p50/p99 (to the first non-empty
text event), failures; "max/p50" shows whether any request starved. The load generator runs on
the same machine as the server and shares its CPUs.

    python bench/bench_serve.py [--json PATH] [--concurrency 32] [--requests 96] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("GLOG_v", "3")

PROMPTS = [
    "def fibonacci(n):\n",
    "# language: Python\nimport os\n\ndef list_python_files(root):\n    \"\"\"Every .py file under root.\"\"\"\n",
    "#include <vector>\n\nint sum(const std::vector<int>& xs) {\n",
    "function debounce(fn, ms) {\n",
    "// Go: reverse a string\nfunc Reverse(s string) string {\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="model config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--checkpoint", help="weights to serve (default: random weights for --config)")
    parser.add_argument("--tokenizer-dir", help="tokenizer directory (default: shared data)")
    parser.add_argument("--max-batch", type=int, default=32, help="--max-batch of both servers (default: %(default)s)")
    parser.add_argument("--baseline-ref", default="03f38da",
                        help="git commit whose server is the baseline ('' to skip; default: the "
                             "last commit before continuous batching)")
    parser.add_argument("--baseline-root", help="an existing checkout to run the baseline server from "
                                                "(instead of extracting --baseline-ref)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=96, help="answers to collect per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=48, help="requests sent before measuring (default: %(default)s)")
    parser.add_argument("--max-tokens-mix", default="8,16,32,64",
                        help="max_tokens values drawn per request (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="stop sending after this many seconds per run (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.max_tokens_mix = [int(t) for t in args.max_tokens_mix.split(",")]
    if args.concurrency < 1 or args.requests < 1 or args.max_batch < 1 or min(args.max_tokens_mix) < 1:
        parser.error("--concurrency, --requests, --max-batch and every --max-tokens-mix must be >= 1")
    return args


def random_checkpoint(args, folder: Path) -> str:
    """A random-weight checkpoint for the benchmark's config (seeded: the same weights every run)."""
    import mindspore as ms

    from codegeex_ms.config import config_from_args
    from codegeex_ms.model.build import build_model
    ms.set_seed(0)
    path = folder / "random.ckpt"
    ms.save_checkpoint(build_model(config_from_args(args).model), str(path))
    return str(path)


class Server:
    """A server as a subprocess (from ``root``, a checkout); ``url`` once it listens."""

    def __init__(self, args, checkpoint: str, root: Path, extra: list, log_path: Path):
        from codegeex_ms.env.paths import shared_data_dir
        cmd = [sys.executable, "-m", "codegeex_ms.serve", "--config", args.config, "--checkpoint", checkpoint,
               "--port", "0", "--log-level", "warning", "--max-batch", str(args.max_batch),
               "--max-queue", str(4 * args.concurrency), "--max-request-rows", "8", *extra]
        cmd += [arg for item in args.overrides for arg in ("--set", item)]
        if args.tokenizer_dir:
            cmd += ["--tokenizer-dir", args.tokenizer_dir]
        env = {**os.environ, "CODEGEEX_SHARED_DATA": str(shared_data_dir()), "PYTHONPATH": str(root)}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        match = re.search(r"serving on (http://\S+)", line)
        if not match:
            self.stop()
            raise SystemExit(f"the server did not start (log: {log_path})")
        self.url = match.group(1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=300)
        self.log.close()


def request_body(args, i: int) -> dict:
    """Request ``i`` of the mixed load (the same for every variant)."""
    rng = np.random.default_rng(1000 + i)
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": int(rng.choice(args.max_tokens_mix)),
            "temperature": args.temperature, "top_p": args.top_p, "stream": True}


async def load(url: str, args, total: int, progress=None) -> dict:
    """Closed loop: ``args.concurrency`` clients send streamed requests until ``total`` answers."""
    latencies, ttfts, failures = [], [], {}
    sent = 0

    async def client(http: httpx.AsyncClient):
        nonlocal sent
        while sent < total:
            body = request_body(args, sent)
            sent += 1
            start = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    failures[r.status_code] = failures.get(r.status_code, 0) + 1
                    continue
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: {") and '"text": ""' not in line:
                        first = time.perf_counter() - start
            latencies.append(time.perf_counter() - start)
            ttfts.append(first if first is not None else latencies[-1])
            if progress is not None:
                progress.update()

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "ttfts": ttfts, "failures": failures, "elapsed_s": elapsed}


def checkout(ref: str, folder: Path) -> Path:
    """The tree of commit ``ref`` extracted under ``folder``."""
    root = folder / f"tree_{ref}"
    root.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def run(args, checkpoint: str, name: str, root: Path, extra: list, folder: Path) -> dict:
    server = Server(args, checkpoint, root, extra, folder / f"server_{name}.log")
    try:
        asyncio.run(load(server.url, args, args.warmup))
        before = httpx.get(server.url + "/health").json()["worker"]
        with tqdm(total=args.requests, desc=name, unit="req") as bar:
            res = asyncio.run(load(server.url, args, args.requests, bar))
        after = httpx.get(server.url + "/health").json()["worker"]
    finally:
        server.stop()
    lat, ttft = np.array(res["latencies"]), np.array(res["ttfts"])
    tokens = after["completion_tokens"] - before["completion_tokens"]
    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else None  # noqa: E731
    return {
        "server": name, "concurrency": args.concurrency, "answered": len(lat),
        "failures": res["failures"], "elapsed_s": res["elapsed_s"],
        "requests_per_s": len(lat) / res["elapsed_s"], "tokens_per_s": tokens / res["elapsed_s"],
        "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99),
        "latency_max_s": float(lat.max()) if len(lat) else None,
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or random_checkpoint(args, folder)
        variants = []
        if args.baseline_ref or args.baseline_root:
            root = Path(args.baseline_root) if args.baseline_root else checkout(args.baseline_ref, folder)
            variants.append((f"before ({args.baseline_ref or root.name})", root, ["--batch-window-ms", "5"]))
        variants.append(("continuous batching", REPO_ROOT, []))
        results = [run(args, checkpoint, name, root, extra, folder) for name, root, extra in variants]

    print(f"\nconfig {args.config} {' '.join(args.overrides)} | {args.concurrency} concurrent clients | "
          f"max_tokens from {args.max_tokens_mix}, temperature {args.temperature}, top_p {args.top_p} | "
          f"--max-batch {args.max_batch} | {os.cpu_count()} CPUs (shared machine)")
    print(f"{'server':>26} {'answered':>8} {'failed':>6} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} "
          f"{'p99 s':>7} {'max/p50':>7} {'TTFT p50':>8} {'TTFT p99':>8}")
    for r in results:
        fmt = lambda v: f"{v:7.3f}" if v is not None else "      -"  # noqa: E731
        starve = r["latency_max_s"] / r["latency_p50_s"] if r["latency_p50_s"] else float("nan")
        print(f"{r['server']:>26} {r['answered']:>8} {sum(r['failures'].values()):>6} "
              f"{r['requests_per_s']:7.2f} {r['tokens_per_s']:7.1f} {fmt(r['latency_p50_s'])} "
              f"{fmt(r['latency_p99_s'])} {starve:7.2f} {r['ttft_p50_s']:8.3f} {r['ttft_p99_s']:8.3f}")
    if len(results) == 2:
        print(f"throughput ratio (continuous / before): {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    if args.json:
        report = {"config": args.config, "overrides": args.overrides, "checkpoint": args.checkpoint,
                  "max_tokens_mix": args.max_tokens_mix, "temperature": args.temperature,
                  "top_p": args.top_p, "max_batch": args.max_batch, "machine": platform.platform(),
                  "cpus": os.cpu_count(), "runs": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
