"""The generation engine against today's static batching, in one run.

1. pass@k sampling: ``--samples`` samples of each of ``--prompts`` HumanEval-X Python prompts
   (T=0.8, top-p 0.95, the Python stop rule, ``--max-new`` tokens) four ways:
   * ``static``: today's batching — ``--slots`` rows at a time, every row prefilled on its own
     (left-padded to one length), the batch decoding until its last row ends, the stop rule
     checked by decoding each row's whole text after every token;
   * ``slots, separate prefills``: the slot scheduler, each sample prefilled on its own;
   * ``slots, shared prefill``: the slot scheduler, each prompt prefilled once for its samples;
   * ``slots, shared + prefix reuse``: also copying a prefix (the language header, ...) that a
     slot already holds instead of computing it.
   Each way keeps its decoders / slot cache between an untimed warm-up run (``--warmup-prompts``
   prompts) and the timed run, as the evaluator and the server do. Every row samples with its own
   generator ``[seed, row]``, so all ways produce the same samples up to float rounding of
   different batch shapes; the table counts samples identical to the shared-prefill way's.
2. Speculative greedy decoding (prompt lookup) on translation prompts (C++ -> Python) against
   plain greedy at batch 1: tokens must be identical; acceptance rate and speed reported.

With random weights (the default) the text is random and prompt lookup rarely guesses right,
so the speculative row shows its overhead, not its benefit; pass ``--checkpoint`` for a trained
model.

    python bench/bench_engine.py [--json PATH] [--config tiny] [--samples 32] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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
    parser.add_argument("--checkpoint", help="weights (default: seeded random weights)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--slots", type=int, default=32, help="rows decoded together (both ways)")
    parser.add_argument("--max-new", type=int, default=64)
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


def load(args):
    import mindspore as ms

    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model, load_model
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / f"{args.config}.yaml"),
                      tuple(args.overrides) + ("model.dropout=0.0",))
    ms.set_seed(0)
    model = load_model(cfg.model, args.checkpoint) if args.checkpoint else build_model(cfg.model)
    model.set_train(False)
    return cfg, model, CodeGeeXTokenizer.from_dir(None)


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
        self.times, self.stats = {}, None

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
    cfg, model, tokenizer = load(args)
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
        stats = fn.stats if fn is pool else None
        times = dict(fn.times, new_graphs=fn.graphs() - graphs)
        results.append((name, out, seconds, times, stats))
    shared = results[2][1]
    tokens = sum(len(t) for t in shared)
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    t_static = results[0][2]
    sampling = [{"way": name, "seconds": seconds, "identical_to_shared": same(out, shared), **times,
                 **({"prefill_calls": st.prefill_calls, "prefill_tokens": st.prefill_tokens,
                     "prefix_tokens": st.prefix_tokens, "decode_steps": st.decode_steps} if st else {})}
                for name, out, seconds, times, st in results]

    room = cfg.inference.max_length - args.spec_new - args.draft_tokens
    spec_rows = [(tokenizer.encode(translation_input(c, "cpp", p, "python"))[-room:], i)
                 for i, (c, p) in enumerate(zip(cpp[:args.spec_prompts], py[:args.spec_prompts]))]
    plain_way = Engine(model, cfg, tokenizer, args, slots=1)
    plain, t_plain = timed(plain_way, spec_rows, greedy=True)
    spec_way = Engine(model, cfg, tokenizer, args, slots=1, speculative=PromptLookup(args.draft_tokens))
    spec, t_spec = timed(spec_way, spec_rows, greedy=True)
    spec_tokens = sum(len(t) for t in plain)
    st = spec_way.stats

    print(f"\nconfig {args.config} {' '.join(args.overrides)} | {'random weights' if not args.checkpoint else args.checkpoint} "
          f"| {os.cpu_count()} CPUs (shared with other jobs)")
    print(f"\n{args.prompts} prompts x {args.samples} samples, {args.slots} rows at a time, "
          f"max {args.max_new} new tokens, {tokens} tokens generated")
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
            "config": args.config, "overrides": args.overrides, "checkpoint": args.checkpoint,
            "machine": platform.platform(), "cpus": os.cpu_count(), "tokens": tokens,
            "sampling": sampling, "speculative": {
                "plain_s": t_plain, "speculative_s": t_spec, "tokens": spec_tokens,
                "identical": same(plain, spec), "rows": len(plain),
                "accepted": st.spec_accepted, "proposed": st.spec_proposed}}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
