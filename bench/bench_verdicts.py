"""HumanEval-X execution throughput per language: canonical solutions of the first ``--problems``
problems, run through ``humaneval.execution.Executor`` with ``--workers`` threads (one sandbox
slot each), after the executor's setup (toolchain probes, prebuilt dependencies, precompiled
headers) and one warm-up sample per language.

Prints samples/s per language and the pass count (all should pass except known-bad canonical
solutions). ``--ref REV`` also measures the code of git revision REV (exported with
``git archive`` into a temporary directory and run in a subprocess), for before/after rows.

    python bench/bench_verdicts.py [--languages all] [--problems 20] [--workers 2]
                                   [--ref REV] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def canonical_throughput(ex, languages, problems: int, workers: int) -> dict:
    """{language: {"samples", "passed", "seconds", "samples_per_s"} or {"skipped"}}: canonical
    solutions of the first ``problems`` problems through the open executor ``ex``, ``workers``
    at a time, after one warm-up sample (caches, page cache). Works with any tree whose
    ``Executor.run(lang, program)`` takes ``assemble_program``'s result."""
    from codegeex_ms.humaneval.assembly import assemble_program
    from codegeex_ms.humaneval.problems import code_prefix, load_problems

    rows = {}
    for lang in languages:
        if lang in ex.skipped:
            rows[lang] = {"skipped": ex.skipped[lang][:200]}
            continue
        items = list(load_problems(lang).values())[:problems]
        programs = [assemble_program(lang, p, code_prefix(p, lang), p["canonical_solution"])
                    for p in items]
        ex.run(lang, programs[0])
        start = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(lambda prog, lang=lang: ex.run(lang, prog), programs))
        seconds = time.monotonic() - start
        rows[lang] = {"samples": len(programs), "passed": sum(o.passed for o in outcomes),
                      "seconds": round(seconds, 2),
                      "samples_per_s": round(len(programs) / seconds, 3)}
    return rows


def measure(languages, problems: int, workers: int) -> dict:
    """:func:`canonical_throughput` with the default executor of the importable tree."""
    from codegeex_ms.humaneval.execution import Executor

    with Executor(languages, workers=workers) as ex:
        return canonical_throughput(ex, languages, problems, workers)


def measure_ref(ref: str, args) -> dict:
    """Run this script's measurement on the tree of git revision ``ref`` (with this tree's
    shared data directory)."""
    from codegeex_ms.env.paths import shared_data_dir
    with tempfile.TemporaryDirectory(prefix="bench_verdicts_") as tmp:
        archive = subprocess.run(["git", "archive", ref], cwd=REPO_ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / "rows.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tmp,
                        "--languages", ",".join(args.languages), "--problems",
                        str(args.problems), "--workers", str(args.workers), "--json", str(out)],
                       check=True, env={**os.environ, "PYTHONPATH": tmp,
                                        "CODEGEEX_SHARED_DATA": str(shared_data_dir())})
        return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--languages", default="all")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ref", help="also measure this git revision (before/after)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, args.child or str(REPO_ROOT))
    from codegeex_ms.data.languages import parse_language_list
    args.languages = parse_language_list(args.languages)

    if args.child:
        Path(args.json).write_text(json.dumps(measure(args.languages, args.problems,
                                                      args.workers)))
        return
    results = {"current": measure(args.languages, args.problems, args.workers)}
    if args.ref:
        results[args.ref] = measure_ref(args.ref, args)
    print(f"{'tree':<12} {'language':<8} {'samples':>7} {'passed':>6} {'seconds':>8} "
          f"{'samples/s':>9}")
    for tree, rows in results.items():
        for lang, row in rows.items():
            if "skipped" in row:
                print(f"{tree:<12} {lang:<8} skipped: {row['skipped']}")
                continue
            print(f"{tree:<12} {lang:<8} {row['samples']:>7} {row['passed']:>6} "
                  f"{row['seconds']:>8.1f} {row['samples_per_s']:>9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"problems": args.problems,
                                               "workers": args.workers, **results}, indent=1))


if __name__ == "__main__":
    main()
