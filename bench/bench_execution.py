"""What isolation costs: HumanEval-X execution samples/s per language under each sandbox setting,
and a long mixed run that must survive hostile samples.

Settings (same tree, same samples: canonical solutions of the first ``--problems`` problems,
``--workers`` threads, after toolchain setup and one warm-up sample):

- ``bwrap+cgroups``  the default: bubblewrap view, per-run cgroup, tmpfs sample directory
- ``bwrap``          the same without the per-run cgroups (what the cgroups cost)
- ``rlimits``        no sandbox at all (``--isolation rlimits``): the floor

``--mixed N`` also runs N Python samples (90% trivial passes/fails, 10% crashing, hanging,
flooding or fork-bombing, ``--mixed-timeout`` seconds each) through ``execute_samples`` and
reports samples/s and the status counts. For before/after rows across commits see
``bench/bench_verdicts.py --ref REV``.

    python bench/bench_execution.py [--languages python,cpp,js] [--problems 8] [--workers 2]
                                    [--settings bwrap+cgroups,bwrap,rlimits] [--mixed 1000]
                                    [--json out.json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codegeex_ms.data.languages import parse_language_list  # noqa: E402
from codegeex_ms.humaneval.execution import Executor  # noqa: E402
from codegeex_ms.humaneval.problems import load_problems  # noqa: E402
from codegeex_ms.humaneval.runners import StepLimits  # noqa: E402
from codegeex_ms.humaneval.sandbox import SandboxLimits  # noqa: E402
from codegeex_ms.humaneval.steps import execute_samples, read_records  # noqa: E402
from bench_verdicts import canonical_throughput  # noqa: E402  (this directory is on sys.path)

SETTINGS = ("bwrap+cgroups", "bwrap", "rlimits")


def _executor(setting: str, languages, workers: int, **kwargs) -> Executor:
    isolation = "rlimits" if setting == "rlimits" else "bubblewrap"
    ex = Executor(languages, workers=workers, isolation=isolation, allow_unsandboxed=True,
                  **kwargs)
    if setting == "bwrap" and ex.sandbox.cgroups is not None:
        ex.sandbox.cgroups.close()
        ex.sandbox.cgroups = None  # runs from now on get no cgroup
    return ex


def measure(setting: str, languages, problems: int, workers: int) -> dict:
    """{language: {samples, passed, seconds, samples_per_s} or {skipped}} for one setting."""
    with _executor(setting, languages, workers) as ex:
        return canonical_throughput(ex, languages, problems, workers)


def _mixed_completion(i: int, canonical: str) -> str:
    if i % 10 < 6:
        return canonical
    if i % 10 < 8:
        return "    return None\n"
    if i % 10 == 8:
        return "    import os\n    os.abort()\n"
    return ["    while True:\n        pass\n",
            "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
            "    import os\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n"][(i // 10) % 3]


def mixed(n: int, workers: int, timeout: float) -> dict:
    """N mixed Python samples through execute_samples under the default sandbox."""
    problem = load_problems("python")["Python/0"]
    with tempfile.TemporaryDirectory() as tmp:
        samples, results = Path(tmp) / "samples.jsonl", Path(tmp) / "results.jsonl"
        samples.write_text("".join(json.dumps({
            "track": "python", "task_id": "Python/0", "sample_idx": i,
            "completion": _mixed_completion(i, problem["canonical_solution"])}) + "\n"
            for i in range(n)))
        limits = StepLimits(run=SandboxLimits(wall_s=timeout, max_procs=32,
                                       max_output_bytes=256 * 1024))
        with Executor(["python"], workers=workers, limits=limits) as ex:
            start = time.monotonic()
            stats = execute_samples(samples, results, {"python": {"Python/0": problem}}, ex,
                                    workers=workers, progress=False)
            seconds = time.monotonic() - start
        done = read_records(results)
    return {"samples": n, "executed": stats["executed"], "results": len(done),
            "seconds": round(seconds, 1), "samples_per_s": round(n / seconds, 3),
            "statuses": dict(Counter(r["status"] for r in done))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--languages", default="python,cpp,js")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--mixed", type=int, default=0, help="also run N mixed samples (e.g. 1000)")
    p.add_argument("--mixed-timeout", type=float, default=10.0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    languages = parse_language_list(args.languages)
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise SystemExit(f"--settings: unknown {bad}; use a subset of {','.join(SETTINGS)}")
    out = {"workers": args.workers, "problems": args.problems, "cpus": os.cpu_count(),
           "settings": {}}
    for setting in settings:
        out["settings"][setting] = measure(setting, languages, args.problems, args.workers)
    print(f"samples/s ({args.problems} canonical samples per language, {args.workers} workers)")
    print(f"| language | {' | '.join(settings)} |")
    print("|---|" + "---|" * len(settings))
    for lang in languages:
        cells = []
        for setting in settings:
            row = out["settings"][setting][lang]
            cells.append("skipped" if "skipped" in row else
                         f"{row['samples_per_s']:.2f} ({row['passed']}/{row['samples']} pass)")
        print(f"| {lang} | {' | '.join(cells)} |")
    if args.mixed:
        out["mixed"] = mixed(args.mixed, args.workers, args.mixed_timeout)
        m = out["mixed"]
        print(f"mixed: {m['results']}/{m['samples']} results in {m['seconds']} s "
              f"({m['samples_per_s']:.2f} samples/s); statuses {m['statuses']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
