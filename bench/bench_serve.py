"""Throughput and latency of ``python -m codegeex_ms.serve`` under concurrent load, batching on vs off.

For each ``--max-batch`` value (1 = batching off) a server is started on a free localhost port
with a tiny random-weight model (or ``--checkpoint``) and driven by a closed-loop async load
generator: ``--concurrency`` clients each send one ``/v1/completions`` request, wait for the
answer, and send the next, until ``--requests`` answers came back or ``--duration`` seconds
passed. Every request has the same sampling options and max_tokens (so the server may batch
them) and one of a few code prompts of different lengths. Before measuring, bursts of 1, 2, 4, ...
simultaneous requests (up to the batch and client limits) compile the batch shapes the run uses.

Reported per run: requests/s, completion tokens/s, latency p50/p99 (seconds from sending to the
full answer), failures (HTTP 429 or other) and the mean rows per model batch (from ``/health``).
The load generator runs on the same machine as the server and shares its CPUs.

    python bench/bench_serve.py [--json PATH] [--max-batch 1,8] [--concurrency 8] [--requests 64]
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
    parser.add_argument("--max-batch", default="1,8",
                        help="comma-separated --max-batch values to compare; 1 = no batching (default: %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending at once (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=64, help="answers to collect per run (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=300.0,
                        help="stop sending after this many seconds per run (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.max_batch = [int(b) for b in args.max_batch.split(",")]
    if args.concurrency < 1 or args.requests < 1 or min(args.max_batch) < 1:
        parser.error("--concurrency, --requests and every --max-batch must be >= 1")
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
    """The server as a subprocess; ``url`` once it listens."""

    def __init__(self, args, checkpoint: str, max_batch: int, log_path: Path):
        cmd = [sys.executable, "-m", "codegeex_ms.serve", "--config", args.config, "--checkpoint", checkpoint,
               "--port", "0", "--log-level", "warning", "--max-batch", str(max_batch),
               "--batch-window-ms", str(args.batch_window_ms), "--max-queue", str(4 * args.concurrency)]
        cmd += [arg for item in args.overrides for arg in ("--set", item)]
        if args.tokenizer_dir:
            cmd += ["--tokenizer-dir", args.tokenizer_dir]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
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


async def load(url: str, args, concurrency: int, total: int, deadline: float, progress=None) -> dict:
    """Closed loop: ``concurrency`` clients send requests until ``total`` answers or ``deadline``."""
    latencies, tokens, failures = [], 0, {}
    sent = 0

    async def client(http: httpx.AsyncClient):
        nonlocal sent, tokens
        while sent < total and time.perf_counter() < deadline:
            body = {"prompt": PROMPTS[sent % len(PROMPTS)], "max_tokens": args.max_tokens,
                    "temperature": args.temperature, "top_p": args.top_p}
            sent += 1
            start = time.perf_counter()
            r = await http.post("/v1/completions", json=body)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - start)
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                failures[r.status_code] = failures.get(r.status_code, 0) + 1
            if progress is not None:
                progress.update()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "tokens": tokens, "failures": failures, "elapsed_s": elapsed}


def run(args, checkpoint: str, max_batch: int, folder: Path) -> dict:
    server = Server(args, checkpoint, max_batch, folder / f"server_b{max_batch}.log")
    try:
        burst = 1
        while burst <= min(max_batch, args.concurrency):   # compile the batch shapes of this load
            for _ in range(2):
                asyncio.run(load(server.url, args, burst, burst, float("inf")))
            burst *= 2
        before = httpx.get(server.url + "/health").json()["worker"]
        with tqdm(total=args.requests, desc=f"max_batch={max_batch}", unit="req") as bar:
            res = asyncio.run(load(server.url, args, args.concurrency, args.requests,
                                   time.perf_counter() + args.duration, bar))
        after = httpx.get(server.url + "/health").json()["worker"]
    finally:
        server.stop()
    lat = np.array(res["latencies"])
    batches = after["batches"] - before["batches"]
    return {
        "max_batch": max_batch, "concurrency": args.concurrency, "answered": len(lat),
        "failures": res["failures"], "elapsed_s": res["elapsed_s"],
        "requests_per_s": len(lat) / res["elapsed_s"], "tokens_per_s": res["tokens"] / res["elapsed_s"],
        "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_p99_s": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_batch_rows": (after["batch_rows"] - before["batch_rows"]) / batches if batches else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or random_checkpoint(args, folder)
        results = [run(args, checkpoint, b, folder) for b in args.max_batch]

    print(f"\nconfig {args.config} {' '.join(args.overrides)} | {args.concurrency} concurrent clients | "
          f"max_tokens {args.max_tokens}, temperature {args.temperature}, top_p {args.top_p} | "
          f"{os.cpu_count()} CPUs")
    print(f"{'max_batch':>9} {'answered':>8} {'failed':>6} {'req/s':>7} {'tok/s':>7} "
          f"{'p50 s':>7} {'p99 s':>7} {'rows/batch':>10}")
    for r in results:
        fmt = lambda v: f"{v:7.3f}" if v is not None else "      -"  # noqa: E731
        rows = f"{r['mean_batch_rows']:10.2f}" if r["mean_batch_rows"] is not None else "         -"
        print(f"{r['max_batch']:>9} {r['answered']:>8} {sum(r['failures'].values()):>6} "
              f"{r['requests_per_s']:7.2f} {r['tokens_per_s']:7.1f} {fmt(r['latency_p50_s'])} "
              f"{fmt(r['latency_p99_s'])} {rows}")
    if args.json:
        report = {"config": args.config, "overrides": args.overrides, "checkpoint": args.checkpoint,
                  "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                  "batch_window_ms": args.batch_window_ms, "machine": platform.platform(),
                  "cpus": os.cpu_count(), "runs": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
