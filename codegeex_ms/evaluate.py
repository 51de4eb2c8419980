"""HumanEval-X evaluation: generate samples, execute them in a sandbox, score pass@k.

    python -m codegeex_ms.evaluate --output-dir runs/heval --steps generate,execute,score \\
        --config CFG --checkpoint CKPT --tokenizer-dir DIR --languages python,cpp \\
        --samples-per-problem 200 --temperature 0.8 --top-p 0.95

Steps run separately or together. Each appends to files in ``--output-dir`` as it goes, so an
interrupted run resumes without redoing finished samples:

- ``samples.jsonl``  one completion per line (generate)
- ``results.jsonl``  one execution outcome per line (execute); ``execution.json`` says which
  isolation and limits were in force, the toolchain versions and which languages were skipped
- ``pass_at_k.json``, ``pass_at_k.md``, ``pass_at_k.png``, ``per_problem.csv`` (score)

``--generator canonical`` answers with the dataset's solutions (a harness self-check: every
sample should pass). Execution and scoring never import MindSpore.
"""

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from . import cli as cli_common
from .data.languages import parse_language_list
from .humaneval.execution import Executor, eval_cache_dir
from .humaneval.problems import Track, load_problems, select_problems
from .humaneval.runners import StepLimits
from .humaneval.sandbox import ISOLATION_CHOICES, Sandbox, SandboxLimits, SandboxUnavailable
from .humaneval.scoring import score, write_chart, write_json, write_markdown, write_per_problem
from .humaneval.steps import (GenerateStep, canonical_generate_fn, execute_samples,
                              generate_samples, read_records)
from .inference.sampling import SamplingParams

STEPS = ("generate", "execute", "score")
# Settings that must not change when generation resumes into an existing output directory.
_RUN_KEYS = ("task", "source_language", "generator", "temperature", "top_p", "max_new_tokens",
             "seed")


def _int_list(text: str) -> list:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = cli_common.ArgumentParser(prog="python -m codegeex_ms.evaluate", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True, type=Path, help="where the .jsonl/report files go")
    p.add_argument("--steps", default="generate,execute,score",
                   help="comma-separated subset of generate,execute,score (default: all)")
    g = p.add_argument_group("problems")
    g.add_argument("--task", choices=("generation", "translation"), default="generation")
    g.add_argument("--languages", default=None,
                   help="target languages (python,cpp,java,js,go,rust or 'all'); generate default "
                        "all; execute/score default: every track in samples.jsonl")
    g.add_argument("--source-language", help="translation source language")
    g.add_argument("--limit-problems", type=int, help="only the first N problems")
    g.add_argument("--problems", type=_int_list, help="problem numbers, e.g. '0,5,10-12'")
    g = p.add_argument_group("generate")
    g.add_argument("--generator", choices=("model", "canonical"), default="model",
                   help="'model': codegeex_ms.inference.loading.load_generator; 'canonical': dataset "
                        "solutions (harness check)")
    cli_common.add_model_args(g, required=False, checkpoint_help="model checkpoint (for --generator model)")
    d = GenerateStep()
    g.add_argument("--samples-per-problem", type=int, default=d.samples_per_problem)
    g.add_argument("--temperature", type=float, default=d.sampling.temperature)
    g.add_argument("--top-p", type=float, default=d.sampling.top_p)
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("execute")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel samples (default: CPU count)")
    g.add_argument("--isolation", choices=ISOLATION_CHOICES, default="auto",
                   help="auto/bubblewrap: the bubblewrap sandbox, or refuse to run; rlimits: "
                        "resource limits only, not a sandbox (needs the next flag)")
    g.add_argument("--i-understand-this-is-not-a-sandbox", dest="allow_unsandboxed",
                   action="store_true",
                   help="allow running untrusted samples without bubblewrap (--isolation "
                        "rlimits, or auto where bubblewrap does not work)")
    g.add_argument("--run-timeout", type=float, default=SandboxLimits().wall_s,
                   help="seconds per test run")
    g.add_argument("--compile-timeout", type=float, default=StepLimits().compile.wall_s,
                   help="seconds per compilation")
    g.add_argument("--python", help="interpreter for Python samples (default: this one; needs numpy)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help=f"prepared dependencies (default {eval_cache_dir()})")
    g.add_argument("--scratch-dir", type=Path, default=None,
                   help="parent of per-sample directories (default: system temp)")
    g = p.add_argument_group("score")
    g.add_argument("--ks", type=_int_list, default=[1, 10, 100], help="k values (default 1,10,100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _tracks(args) -> list:
    languages = parse_language_list(args.languages or "all")
    if args.task == "translation":
        if not args.source_language:
            raise SystemExit("--task translation needs --source-language")
        src = Track(args.source_language, None).language
        return [Track(lang, src) for lang in languages if lang != src]
    return [Track(lang) for lang in languages]


def _load(languages, args) -> dict:
    problems = {}
    for lang in languages:
        numbers = set(args.problems) if args.problems else None
        problems[lang] = select_problems(load_problems(lang), args.limit_problems, numbers)
    return problems


def _check_run_config(path: Path, current: dict) -> None:
    """SystemExit if ``path`` holds settings other than ``current`` (nothing is written)."""
    if path.exists():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), current[k]) for k in _RUN_KEYS if saved.get(k) != current[k]}
        if diff:
            raise SystemExit(f"{path} was written with different settings {diff} (saved, now); "
                             "use another --output-dir or the saved settings")


def _model_generate_fn(args):
    """generate_fn over ``codegeex_ms.inference.loading.load_generator`` (imports MindSpore lazily)."""
    missing = [f"--{n}" for n in ("config", "checkpoint") if not getattr(args, n)]
    if missing:
        raise SystemExit(f"--generator model needs {', '.join(missing)}")
    from .inference.loading import load_generator
    generator = load_generator(cli_common.config_for_checkpoint(args, args.checkpoint),
                               args.checkpoint, args.tokenizer_dir,
                               args.mode, args.device_target, adapter=args.adapter)

    def generate_fn(prompts, *, max_new_tokens, sampling, seed, stop_fn):
        # The generator's stop callback returns the final text (or None to go on); the full
        # text is kept here and cut by generate_samples with the same rule.
        completions = generator.generate(
            prompts, max_new_tokens, sampling, seed=seed,
            stop_fn=lambda text: text if stop_fn(text) else None, truncate="left")
        return [c.text for c in completions]

    return generate_fn


def step_generate(args, generate_fn=None) -> None:
    tracks = _tracks(args)
    languages = {t.language for t in tracks} | {t.source for t in tracks if t.source}
    problems = _load(sorted(languages), args)
    cfg = GenerateStep(args.samples_per_problem, SamplingParams(args.temperature, 0, args.top_p),
                       args.max_new_tokens, args.batch_size, args.seed)
    run_config = {"task": args.task, "source_language": args.source_language,
                  "generator": "custom" if generate_fn else args.generator,
                  "temperature": args.temperature, "top_p": args.top_p,
                  "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
    _check_run_config(args.output_dir / "run_config.json", run_config)
    canonical = generate_fn is None and args.generator == "canonical"
    if generate_fn is None:  # the model loads before anything is written
        generate_fn = (canonical_generate_fn(tracks, problems) if canonical
                       else _model_generate_fn(args))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    added = generate_samples(tracks, problems, generate_fn, args.output_dir / "samples.jsonl",
                             cfg, truncate=not canonical, progress=not args.no_progress)
    print(f"generate: {added} new samples in {args.output_dir / 'samples.jsonl'}")


def _sample_tracks(args) -> list:
    names = dict.fromkeys(r["track"] for r in read_records(args.output_dir / "samples.jsonl"))
    if args.languages:
        wanted = set(parse_language_list(args.languages))
        names = {n: None for n in names if Track.parse(n).language in wanted}
    return list(names)


def step_execute(args) -> None:
    tracks = [Track.parse(n) for n in _sample_tracks(args)]
    if not tracks:
        raise SystemExit(f"no samples in {args.output_dir / 'samples.jsonl'}: run the generate step")
    languages = sorted({t.language for t in tracks})
    problems = {lang: load_problems(lang) for lang in languages}
    default = StepLimits()
    limits = StepLimits(run=replace(default.run, wall_s=args.run_timeout),
                        compile=replace(default.compile, wall_s=args.compile_timeout))
    try:
        executor = Executor(languages, workers=args.workers, isolation=args.isolation,
                            limits=limits, cache_dir=args.cache_dir, scratch_dir=args.scratch_dir,
                            python=args.python, allow_unsandboxed=args.allow_unsandboxed)
    except SandboxUnavailable as e:
        raise SystemExit(f"execute: {e}") from e
    with executor:
        meta = executor.describe()
        print(f"execute: {meta['sample_directory']}")
        for lang, reason in meta["skipped"].items():
            print(f"execute: skipping {lang}: {reason}", file=sys.stderr)
        (args.output_dir / "execution.json").write_text(json.dumps(meta, indent=2) + "\n")
        stats = execute_samples(args.output_dir / "samples.jsonl",
                                args.output_dir / "results.jsonl", problems, executor,
                                workers=args.workers, progress=not args.no_progress)
    print(f"execute: {stats['executed']} samples run; skipped: "
          f"{ {k: v[1] for k, v in stats['skipped'].items()} or 'none'}")


def step_score(args) -> None:
    out = args.output_dir
    results = read_records(out / "results.jsonl")
    meta_path = out / "execution.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    names = set(_sample_tracks(args))
    results = [r for r in results if r["track"] in names]
    summary, rows = score(results, args.ks, sample_tracks=sorted(names),
                          skipped=meta.get("skipped"))
    summary["isolation"] = meta.get("isolation_detail")
    write_json(out / "pass_at_k.json", summary)
    write_markdown(out / "pass_at_k.md", summary)
    write_per_problem(out / "per_problem.csv", rows, args.ks)
    if summary["tracks"]:
        write_chart(out / "pass_at_k.png", summary)
    print((out / "pass_at_k.md").read_text())


def _isolation_line(args) -> str:
    """What the execute step's sandbox will be; SystemExit when it refuses to run."""
    try:
        with Sandbox(args.isolation, allow_unsandboxed=args.allow_unsandboxed) as sandbox:
            return sandbox.describe()
    except SandboxUnavailable as e:
        raise SystemExit(f"execute: {e}") from e


def main(argv=None, generate_fn=None) -> None:
    """CLI entry point; ``generate_fn`` replaces the model (used by tests)."""
    args = build_parser().parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise SystemExit(f"--steps: unknown {bad or steps}; use a subset of {','.join(STEPS)}")
    if "execute" in steps:  # first line: the isolation, or the refusal, before any work
        print(f"isolation: {_isolation_line(args)}", flush=True)
    if "generate" in steps:
        step_generate(args, generate_fn)
    if "execute" in steps:
        step_execute(args)
    if "score" in steps:
        step_score(args)


if __name__ == "__main__":
    sys.exit(cli_common.run(main))
