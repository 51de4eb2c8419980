"""The generation engine against today's static batching, in one run.

1. pass@k sampling, HumanEval-X style: ``--samples`` samples of each of ``--prompts`` HumanEval-X
   Python prompts (T=0.8, top-p 0.95, ending at EOD or by the Python stop rule, at most
   ``--max-new`` tokens) four ways:
   * ``static``: today's batching — ``--slots`` rows at a time, every row prefilled on its own
     (left-padded to one length), the batch decoding until its last row ends, the stop rule
     checked by decoding each row's whole text after every token;
   * ``slots, separate prefills``: the slot scheduler, each sample prefilled on its own;
   * ``slots, shared prefill``: the slot scheduler, each prompt prefilled once for its samples;
   * ``slots, shared + prefix reuse``: also copying a prefix (the language header, ...) that a
     slot already holds instead of computing it.
   All ways choose tokens with the same sampler (``inference.logits.choose``). Each way keeps its
   decoders / slot cache between an untimed warm-up run (``--warmup-prompts`` prompts) and the
   timed run, as the evaluator and the server do. Every row samples with its own generator
   ``[seed, row]``, so all ways produce the same samples up to float rounding of different batch
   shapes; the table counts samples identical to the shared-prefill way's.
2. Speculative greedy decoding (prompt lookup) on translation prompts (C++ -> Python) against
   plain greedy at batch 1: tokens must be identical; acceptance rate and speed reported.

The model: real pass@k generation samples a trained model whose samples end at varied lengths.
Without ``--checkpoint`` the bench first trains one (``--train-steps``, default 300: about 2
minutes for tiny on 2 cores): the ``--config`` model fine-tuned from scratch on docstring ->
body pairs of this Python's standard library (prompt: the language tag, the signature and the
docstring, as HumanEval-X's; completion: the body, then EOD). Its text is poor, but its samples
end like real ones: at EOD or a dedent, at lengths from 0 to ``--max-new``. ``--train-steps 0``
takes seeded random weights instead (nearly flat distributions: top-p keeps most of the
vocabulary and few samples end early; the conditions of earlier measurements).
``--model-dir`` keeps the trained model for later runs. Prompt lookup guesses right only as often
as the model copies its prompt, rarely for these models: the speculative row shows its overhead
more than its benefit.

    python bench/bench_engine.py [--json PATH] [--config tiny] [--samples 32] [--prompts 8]
        [--checkpoint PATH | --train-steps N [--model-dir DIR]] [--max-new 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("GLOG_v", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--checkpoint", help="weights of the --config model with --max-length "
                                                 "positions (default: train one, see --train-steps)")
    parser.add_argument("--train-steps", type=int, default=300,
                        help="without --checkpoint: fine-tune the model from scratch for this many "
                             "steps on docstring -> body pairs first; 0: seeded random weights "
                             "(default: %(default)s)")
    parser.add_argument("--train-lr", type=float, default=3e-3,
                        help="peak learning rate of that training (default: %(default)s, for tiny; "
                             "1e-3 suits small)")
    parser.add_argument("--model-dir", help="where the trained model is written; a model trained "
                                            "there with the same settings is reused (default: a "
                                            "temporary directory, removed)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="positions of the model and the caches: prompt + new tokens (sets "
                             "model.max_position_embeddings and inference.max_length; default: "
                             "%(default)s)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--slots", type=int, default=32, help="rows decoded together (both ways)")
    parser.add_argument("--max-new", type=int, default=256,
                        help="new tokens at most per sample (default: %(default)s; HumanEval-X "
                             "generation allows a few hundred)")
    parser.add_argument("--warmup-prompts", type=int, default=2,
                        help="prompts (x --samples) of the untimed first run of each way, which "
                             "compiles its graphs (default: %(default)s; graphs first met in the "
                             "timed run are compiled there and counted against that way)")
    parser.add_argument("--spec-prompts", type=int, default=4)
    parser.add_argument("--spec-new", type=int, default=48)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json")
    return parser.parse_args(argv)


def model_overrides(args) -> tuple:
    """``--set`` overrides of the model that is trained, loaded and run."""
    return tuple(args.overrides) + (f"model.max_position_embeddings={args.max_length}",
                                    f"inference.max_length={args.max_length}", "model.dropout=0.0")


def load(args, checkpoint=None):
    import mindspore as ms

    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model, load_model
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / f"{args.config}.yaml"), model_overrides(args))
    ms.set_seed(0)
    model = load_model(cfg.model, checkpoint) if checkpoint else build_model(cfg.model)
    model.set_train(False)
    return cfg, model, CodeGeeXTokenizer.from_dir(None)


def docstring_pairs(path: Path) -> int:
    """Write HumanEval-style prompt/completion pairs (``.jsonl``) from the functions with a
    docstring in this Python's standard library: prompt = language tag + the function dedented
    up to its docstring, completion = the rest of its body. Returns how many."""
    import ast
    import sysconfig
    import textwrap

    from codegeex_ms.humaneval.problems import language_tag
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
            text = source.read_text(encoding="utf-8", errors="replace")
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            lines = text.splitlines(keepends=True)
            for node in ast.walk(tree):
                if (not isinstance(node, ast.FunctionDef) or ast.get_docstring(node) is None
                        or len(node.body) < 2):
                    continue
                first = (node.decorator_list[0] if node.decorator_list else node).lineno - 1
                body = textwrap.dedent("".join(lines[first:node.end_lineno])).splitlines(keepends=True)
                head = node.body[0].end_lineno - first
                prompt, completion = "".join(body[:head]), "".join(body[head:])
                if completion.strip() and len(prompt) + len(completion) <= 4000:
                    out.write(json.dumps({"prompt": language_tag("python") + "\n" + prompt,
                                          "completion": completion}) + "\n")
                    count += 1
    return count


def trained_checkpoint(args, directory: Path) -> tuple:
    """(checkpoint, description): the model fine-tuned from scratch in ``directory`` by
    ``python -m codegeex_ms.train`` (see the module doc), or the one already there with the same
    settings."""
    settings = {"config": args.config, "overrides": list(model_overrides(args)), "steps": args.train_steps,
                "lr": args.train_lr}
    checkpoint, record = directory / "train" / "model_final.ckpt", directory / "bench_model.json"
    if checkpoint.is_file() and record.is_file() and json.loads(record.read_text())["settings"] == settings:
        return str(checkpoint), json.loads(record.read_text())["description"]
    directory.mkdir(parents=True, exist_ok=True)
    pairs = docstring_pairs(directory / "pairs.jsonl")
    steps = args.train_steps
    train = {"seq_length": 256, "micro_batch_size": 4, "train_steps": steps, "warmup_steps": 10,
             "decay_steps": 2 * steps, "lr": args.train_lr, "min_lr": args.train_lr / 10, "save_every": steps,
             "log_every": 10, "output_dir": directory / "train"}
    sets = [f"train.{k}={v}" for k, v in train.items()] + [
        "data.finetune=true", f"data.train_path={directory / 'pairs.jsonl'}", *model_overrides(args)]
    print(f"training the {args.config} model: {steps} steps on {pairs} docstring -> body pairs ...",
          flush=True)
    t0 = time.perf_counter()
    with open(directory / "train.log", "w") as log:
        subprocess.run([sys.executable, "-m", "codegeex_ms.train", "--config", args.config,
                        "--no-progress", *[a for kv in sets for a in ("--set", kv)]],
                       cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = [json.loads(line) for line in open(directory / "train" / "train_log.jsonl")]
    description = (f"{args.config} fine-tuned from scratch, {steps} steps x 4 x 256 tokens (peak LR "
                   f"{args.train_lr:g}) on {pairs} "
                   f"docstring -> body pairs of the Python {platform.python_version()} standard "
                   f"library (loss {rows[0]['loss']:.2f} at step {rows[0]['step']} -> "
                   f"{rows[-1]['loss']:.2f}; trained in {time.perf_counter() - t0:.0f} s)")
    record.write_text(json.dumps({"settings": settings, "description": description}))
    return str(checkpoint), description


class StaticBatches:
    """Today's path: fixed batches of ``args.slots`` rows, each row prefilled, left-padded; a batch
    decodes until all its rows end; the stop rule re-decodes each row's text every token. Like
    today's ``Generator`` it keeps its ``CachedDecoder`` per (rows, length) between runs.
    ``times``: seconds in the model (``model_s``) and on the host (``host_s``) of the last run."""

    def __init__(self, model, cfg, tokenizer, args):
        self.model, self.cfg, self.tokenizer, self.args = model, cfg, tokenizer, args
        self.decoders = {}
        self.times = {}

    def graphs(self) -> int:
        """Graphs compiled so far (a prefill and a decode graph per decoder)."""
        return 2 * len(self.decoders)

    def __call__(self, rows):
        from codegeex_ms.humaneval.stopping import stop_index
        from codegeex_ms.inference.generator import bucket
        from codegeex_ms.inference.logits import choose
        from codegeex_ms.inference.sampling import SamplingParams
        from codegeex_ms.model.kv_cache import CachedDecoder
        cfg, args, tokenizer = self.cfg, self.args, self.tokenizer
        params = SamplingParams(0.8, 0, 0.95)
        out, model_s, calls, t_run = [], 0.0, 0, time.perf_counter()
        for first in range(0, len(rows), args.slots):
            batch = rows[first:first + args.slots]
            b = len(batch)
            p = min(bucket(max(len(t) for t, _ in batch), cfg.inference.max_length),
                    cfg.inference.max_length - args.max_new)
            length = bucket(p + args.max_new, cfg.inference.max_length)
            if (b, length) not in self.decoders:
                self.decoders[(b, length)] = CachedDecoder(self.model, b, length)
            dec = self.decoders[(b, length)]
            t0 = time.perf_counter()
            logits = dec.prefill([t for t, _ in batch], p)
            model_s += time.perf_counter() - t0
            calls += 1
            rngs = [np.random.default_rng([args.seed, r]) for _, r in batch]
            gen = [[] for _ in range(b)]
            done = [False] * b
            for _ in range(args.max_new):
                lg = np.array(logits, np.float32)
                lg[:, cfg.model.real_vocab_size:] = -np.inf
                live = [r for r in range(b) if not done[r]]
                picks = choose(lg[live], [params] * len(live), [rngs[r] for r in live])
                tokens = np.zeros(b, np.int32)
                for r, t in zip(live, picks):
                    tokens[r] = t
                    if t == tokenizer.eod_id:
                        done[r] = True
                        continue
                    gen[r].append(int(t))
                    if stop_index(tokenizer.decode(gen[r]), "python") is not None or len(gen[r]) == args.max_new:
                        done[r] = True
                if all(done):
                    break
                t0 = time.perf_counter()
                logits = dec.decode(tokens)
                model_s += time.perf_counter() - t0
                calls += 1
            out += gen
        self.times = {"model_s": model_s, "host_s": time.perf_counter() - t_run - model_s,
                      "model_calls": calls}
        return out


class Engine:
    """The slot scheduler over one ``SlotKVCache`` kept between runs (as the evaluator and the
    server keep theirs); each run is a fresh scheduler, so no run reuses another's cache
    contents. ``times`` and ``stats`` describe the last run."""

    def __init__(self, model, cfg, tokenizer, args, slots=None, speculative=None):
        from codegeex_ms.model.kv_cache import SlotKVCache
        self.cfg, self.tokenizer, self.args, self.speculative = cfg, tokenizer, args, speculative
        self.cache = SlotKVCache(model, slots or args.slots, cfg.inference.max_length, cfg.model.eod_token_id)
        self.times, self.stats, self.finish = {}, None, []

    def graphs(self) -> int:
        """Shapes run so far: each is one compiled graph."""
        return len(self.cache.shapes)

    def __call__(self, rows, share: bool = True, greedy: bool = False, prefixes: bool = True):
        from codegeex_ms.humaneval.stopping import LanguageStop
        from codegeex_ms.inference.sampling import SamplingParams
        from codegeex_ms.inference.scheduler import Request, SlotScheduler
        args, cfg = self.args, self.cfg
        sched = SlotScheduler(self.cache, self.tokenizer, eod=self.tokenizer.eod_id,
                              real_vocab_size=cfg.model.real_vocab_size, speculative=self.speculative,
                              share_prompts=share, share_prefixes=prefixes)
        params = SamplingParams() if greedy else SamplingParams(0.8, 0, 0.95)
        max_new = args.spec_new if greedy else args.max_new
        stop = None if greedy else LanguageStop("python")
        reqs = [Request(t, max_new, params, seed=args.seed, seed_offset=r, stop_fn=stop) for t, r in rows]
        t0 = time.perf_counter()
        for req in reqs:
            sched.submit(req)
        sched.run()
        st = self.stats = sched.stats
        self.times = {"model_s": st.model_s, "host_s": time.perf_counter() - t0 - st.model_s,
                      "model_calls": st.prefill_calls + st.decode_steps}
        self.finish = [req.results[0].finish_reason for req in reqs]
        return [req.results[0].token_ids for req in reqs]


def timed(fn, *a, **kw):
    """(result, seconds) of the second call: the first compiles."""
    fn(*a, **kw)
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    from codegeex_ms.humaneval.problems import load_problems
    from codegeex_ms.humaneval.problems import generation_input, translation_input
    from codegeex_ms.inference.speculative import PromptLookup
    checkpoint, weights = args.checkpoint, args.checkpoint or "seeded random weights"
    scratch = None
    if not checkpoint and args.train_steps > 0:
        scratch = None if args.model_dir else tempfile.mkdtemp(prefix="bench_engine_")
        checkpoint, weights = trained_checkpoint(args, Path(args.model_dir or scratch))
    try:
        cfg, model, tokenizer = load(args, checkpoint)
    finally:
        if scratch:
            shutil.rmtree(scratch)
    room = cfg.inference.max_length - args.max_new - args.draft_tokens
    py = list(load_problems("python").values())
    cpp = list(load_problems("cpp").values())
    prompts = [tokenizer.encode(generation_input(p, "python"))[-room:] for p in py[:args.prompts]]
    rows = [(prompts[i // args.samples], i) for i in range(args.prompts * args.samples)]

    static_way, pool = StaticBatches(model, cfg, tokenizer, args), Engine(model, cfg, tokenizer, args)
    ways = [("static (today)", static_way, {}),
            ("slots, separate prefills", pool, {"share": False, "prefixes": False}),
            ("slots, shared prefill", pool, {"share": True, "prefixes": False}),
            ("slots, shared + prefix reuse", pool, {"share": True, "prefixes": True})]
    results = []
    warm = rows[:args.warmup_prompts * args.samples]
    for name, fn, kw in ways:
        fn(warm, **kw)
        graphs = fn.graphs()
        t0 = time.perf_counter()
        out = fn(rows, **kw)
        seconds = time.perf_counter() - t0
        stats, finish = (fn.stats, list(fn.finish)) if fn is pool else (None, None)
        times = dict(fn.times, new_graphs=fn.graphs() - graphs)
        results.append((name, out, seconds, times, stats, finish))
    shared, pool_finish = results[2][1], results[2][5]
    tokens = sum(len(t) for t in shared)
    lengths = np.array([len(t) for t in shared])
    ends = {reason: pool_finish.count(reason) for reason in sorted(set(pool_finish))}
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    t_static = results[0][2]
    sampling = [{"way": name, "seconds": seconds, "identical_to_shared": same(out, shared), **times,
                 **({"prefill_calls": st.prefill_calls, "prefill_tokens": st.prefill_tokens,
                     "prefix_tokens": st.prefix_tokens, "decode_steps": st.decode_steps} if st else {})}
                for name, out, seconds, times, st, _ in results]

    room = cfg.inference.max_length - args.spec_new - args.draft_tokens
    spec_rows = [(tokenizer.encode(translation_input(c, "cpp", p, "python"))[-room:], i)
                 for i, (c, p) in enumerate(zip(cpp[:args.spec_prompts], py[:args.spec_prompts]))]
    plain_way = Engine(model, cfg, tokenizer, args, slots=1)
    plain, t_plain = timed(plain_way, spec_rows, greedy=True)
    spec_way = Engine(model, cfg, tokenizer, args, slots=1, speculative=PromptLookup(args.draft_tokens))
    spec, t_spec = timed(spec_way, spec_rows, greedy=True)
    spec_tokens = sum(len(t) for t in plain)
    st = spec_way.stats

    print(f"\nconfig {args.config} {' '.join(model_overrides(args))} | {os.cpu_count()} CPUs "
          "(shared with other jobs)\nmodel: " + weights)
    print(f"\n{args.prompts} HumanEval-X Python prompts x {args.samples} samples (T=0.8, top-p 0.95, "
          f"EOD or the Python stop rule), {args.slots} rows at a time, max {args.max_new} new tokens: "
          f"{tokens} tokens generated; sample lengths mean {lengths.mean():.1f}, median "
          f"{np.median(lengths):.0f}, max {lengths.max()}; ended by "
          + ", ".join(f"{reason} {n}" for reason, n in ends.items()))
    print(f"{'way':>30} {'seconds':>8} {'tok/s':>8} {'speedup':>8} {'identical':>10} {'model s':>8} "
          f"{'host s':>7} {'calls':>6} {'graphs':>6} {'computed':>8} {'copied':>6}")
    for r in sampling:
        print(f"{r['way']:>30} {r['seconds']:8.2f} {tokens / r['seconds']:8.1f} "
              f"{t_static / r['seconds']:7.2f}x {r['identical_to_shared']:>5}/{len(shared)} "
              f"{r['model_s']:8.2f} {r['host_s']:7.2f} {r['model_calls']:>6} {r['new_graphs']:>6} "
              f"{r.get('prefill_tokens', ''):>8} {r.get('prefix_tokens', ''):>6}")
    print("model s: seconds inside model calls; host s: the rest (sampling, stop rules, bookkeeping); "
          "calls: model calls; graphs: graphs first compiled in the timed run; computed/copied: "
          "prompt tokens prefilled / copied from a slot's cached prefix")
    print(f"\nspeculative greedy, {len(spec_rows)} translation prompts at batch 1, {args.spec_new} new tokens")
    print(f"{'way':>26} {'seconds':>8} {'tok/s':>8} {'speedup':>8} {'identical':>10} {'accepted':>9}")
    print(f"{'plain greedy':>26} {t_plain:8.2f} {spec_tokens / t_plain:8.1f} {1:7.2f}x {'':>10} {'':>9}")
    print(f"{'prompt lookup k=' + str(args.draft_tokens):>26} {t_spec:8.2f} {spec_tokens / t_spec:8.1f} "
          f"{t_plain / t_spec:7.2f}x {same(plain, spec):>5}/{len(plain)} "
          f"{st.spec_accepted}/{st.spec_proposed}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "overrides": list(model_overrides(args)), "model": weights,
            "machine": platform.platform(), "cpus": os.cpu_count(), "tokens": tokens,
            "prompts": args.prompts, "samples": args.samples, "slots": args.slots,
            "max_new": args.max_new, "sample_lengths": lengths.tolist(), "ended_by": ends,
            "sampling": sampling, "speculative": {
                "plain_s": t_plain, "speculative_s": t_spec, "tokens": spec_tokens,
                "identical": same(plain, spec), "rows": len(plain),
                "accepted": st.spec_accepted, "proposed": st.spec_proposed}}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
