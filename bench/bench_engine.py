"""The generation engine against today's static batching, in one run.

1. pass@k sampling: ``--samples`` samples of each of ``--prompts`` HumanEval-X Python prompts
   (T=0.8, top-p 0.95, the Python stop rule, ``--max-new`` tokens) three ways:
   * ``static``: today's batching — ``--slots`` rows at a time, every row prefilled on its own
     (left-padded to one length), the batch decoding until its last row ends, the stop rule
     checked by decoding each row's whole text after every token;
   * ``slots, separate prefills``: the slot scheduler, each sample prefilled on its own;
   * ``slots, shared prefill``: the slot scheduler, each prompt prefilled once for its samples.
   Every row samples with its own generator ``[seed, row]``, so the three produce the same
   samples up to float rounding of different batch shapes; the table counts identical samples.
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
    from codegeex_ms.tokenizer import CodeGeeXTokenizer
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / f"{args.config}.yaml"),
                      tuple(args.overrides) + ("model.dropout=0.0",))
    ms.set_seed(0)
    model = load_model(cfg.model, args.checkpoint) if args.checkpoint else build_model(cfg.model)
    model.set_train(False)
    return cfg, model, CodeGeeXTokenizer.from_dir(None)


def static_batches(model, cfg, tokenizer, rows, args):
    """Today's path: fixed batches of ``args.slots`` rows, each row prefilled, left-padded; a batch
    decodes until all its rows end; the stop rule re-decodes each row's text every token."""
    from codegeex_ms.humaneval.stopping import stop_index
    from codegeex_ms.inference.generator import bucket
    from codegeex_ms.inference.logits import choose
    from codegeex_ms.inference.sampling import SamplingParams
    from codegeex_ms.model.kv_cache import CachedDecoder
    params = SamplingParams(0.8, 0, 0.95)
    out, decoders = [], {}
    for first in range(0, len(rows), args.slots):
        batch = rows[first:first + args.slots]
        b = len(batch)
        p = min(bucket(max(len(t) for t, _ in batch), cfg.inference.max_length),
                cfg.inference.max_length - args.max_new)
        length = bucket(p + args.max_new, cfg.inference.max_length)
        if (b, length) not in decoders:
            decoders[(b, length)] = CachedDecoder(model, b, length)
        dec = decoders[(b, length)]
        ids = np.zeros((b, p), np.int32)
        pads = np.array([p - len(t) for t, _ in batch])
        for r, (t, _) in enumerate(batch):
            ids[r, pads[r]:] = t
        slots = np.arange(p)
        pos = np.maximum(slots[None, :] - pads[:, None], 0).astype(np.int32)
        keys = np.arange(length)
        mask = ((keys[None, None, :] <= slots[None, :, None]) & (keys[None, None, :] >= pads[:, None, None]))
        logits = dec.step(ids, pos, mask.astype(np.float32), 0)
        rngs = [np.random.default_rng([args.seed, r]) for _, r in batch]
        gen = [[] for _ in range(b)]
        done = [False] * b
        for step in range(args.max_new):
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
            slot = p + step
            step_mask = (keys[None, :] <= slot) & (keys[None, :] >= pads[:, None])
            logits = dec.step(tokens[:, None], (slot - pads)[:, None].astype(np.int32),
                              step_mask[:, None, :].astype(np.float32), slot)
        out += gen
    return out


def engine(model, cfg, tokenizer, rows, args, share: bool, speculative=None, slots=None, greedy=False):
    from codegeex_ms.humaneval.stopping import LanguageStop
    from codegeex_ms.inference.sampling import SamplingParams
    from codegeex_ms.inference.scheduler import Request, SlotScheduler
    from codegeex_ms.model.kv_cache import SlotKVCache
    cache = SlotKVCache(model, slots or args.slots, cfg.inference.max_length, cfg.model.eod_token_id)
    sched = SlotScheduler(cache, tokenizer, eod=tokenizer.eod_id, real_vocab_size=cfg.model.real_vocab_size,
                          speculative=speculative, share_prompts=share)
    params = SamplingParams() if greedy else SamplingParams(0.8, 0, 0.95)
    max_new = args.spec_new if greedy else args.max_new
    stop = None if greedy else LanguageStop("python")
    reqs = [Request(t, max_new, params, seed=args.seed, seed_offset=r, stop_fn=stop) for t, r in rows]
    for req in reqs:
        sched.submit(req)
    sched.run()
    return [req.results[0].token_ids for req in reqs], sched


def timed(fn, *a, **kw):
    """(result, seconds) of the second call: the first compiles."""
    fn(*a, **kw)
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    from codegeex_ms.humaneval.problems import load_problems
    from codegeex_ms.humaneval.prompts import generation_input, translation_input
    from codegeex_ms.inference.speculative import PromptLookup
    cfg, model, tokenizer = load(args)
    room = cfg.inference.max_length - args.max_new - args.draft_tokens
    py = list(load_problems("python").values())
    cpp = list(load_problems("cpp").values())
    prompts = [tokenizer.encode(generation_input(p, "python"))[-room:] for p in py[:args.prompts]]
    rows = [(prompts[i // args.samples], i) for i in range(args.prompts * args.samples)]

    static, t_static = timed(static_batches, model, cfg, tokenizer, rows, args)
    (separate, _), t_sep = timed(engine, model, cfg, tokenizer, rows, args, share=False)
    (shared, sched), t_shared = timed(engine, model, cfg, tokenizer, rows, args, share=True)
    tokens = sum(len(t) for t in shared)
    same = lambda a, b: sum(x == y for x, y in zip(a, b))  # noqa: E731
    sampling = [
        {"way": "static (today)", "seconds": t_static, "identical_to_shared": same(static, shared)},
        {"way": "slots, separate prefills", "seconds": t_sep, "identical_to_shared": same(separate, shared)},
        {"way": "slots, shared prefill", "seconds": t_shared, "identical_to_shared": len(shared)},
    ]

    room = cfg.inference.max_length - args.spec_new - args.draft_tokens
    spec_rows = [(tokenizer.encode(translation_input(c, "cpp", p, "python"))[-room:], i)
                 for i, (c, p) in enumerate(zip(cpp[:args.spec_prompts], py[:args.spec_prompts]))]
    (plain, _), t_plain = timed(engine, model, cfg, tokenizer, spec_rows, args, share=True, slots=1, greedy=True)
    lookup = PromptLookup(args.draft_tokens)
    (spec, ssched), t_spec = timed(engine, model, cfg, tokenizer, spec_rows, args, share=True, slots=1,
                                   greedy=True, speculative=lookup)
    spec_tokens = sum(len(t) for t in plain)
    st = ssched.stats

    print(f"\nconfig {args.config} {' '.join(args.overrides)} | {'random weights' if not args.checkpoint else args.checkpoint} "
          f"| {os.cpu_count()} CPUs (shared with other jobs)")
    print(f"\n{args.prompts} prompts x {args.samples} samples, {args.slots} rows at a time, "
          f"max {args.max_new} new tokens, {tokens} tokens generated")
    print(f"{'way':>26} {'seconds':>8} {'tok/s':>8} {'speedup':>8} {'identical':>10}")
    for r in sampling:
        print(f"{r['way']:>26} {r['seconds']:8.2f} {tokens / r['seconds']:8.1f} "
              f"{t_static / r['seconds']:7.2f}x {r['identical_to_shared']:>5}/{len(shared)}")
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
