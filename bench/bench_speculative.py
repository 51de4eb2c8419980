"""Speculative greedy decoding (prompt lookup) against plain greedy, with a model that copies.

With random weights prompt lookup never guesses right, so this benchmark first trains a small
CodeGeeX to copy: the PyTorch model of ``bench/torch_codegeex.py`` (in a child process, for
``--train-seconds``) on HumanEval-X code (all languages' prompts and canonical solutions) where
windows of code recur later in the sequence, as identifiers and whole lines recur in a
translation. Its vocabulary is the token ids that code uses (the real tokenizer's ids, renumbered
densely: the tied head over 52,224 rows would make training 10x slower). The weights are then
loaded into this project's MindSpore model (the logits are checked against PyTorch's), which
decodes C++ -> Python translation prompts (``humaneval.problems.translation_input``) at batch 1
through the slot scheduler: plain greedy, then prompt lookup with each ``--draft-tokens`` k.
Tokens must be identical; reported: seconds (best of ``--rounds`` runs, the ways alternating,
after one run that compiles), speed-up, drafts accepted / proposed, forward passes, and the cost
of one k+1-token verification forward relative to a one-token decode step.

    python bench/bench_speculative.py [--json PATH] [--train-seconds 150] [--draft-tokens 2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("GLOG_v", "3")

MODEL = dict(hidden=128, heads=4, layers=2, positions=512)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--weights", help="reuse a .npz written by an earlier run (skips training)")
    parser.add_argument("--keep-weights", help="write the trained weights here")
    parser.add_argument("--prompts", type=int, default=4, help="translation prompts (C++ -> Python)")
    parser.add_argument("--max-new", type=int, default=96)
    parser.add_argument("--draft-tokens", default="2,4,8")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each way, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- corpus and vocabulary

def corpus_tokens(tokenizer) -> list:
    """Token lists of every HumanEval-X problem's prompt + canonical solution, all languages."""
    from codegeex_ms.humaneval.problems import load_problems
    docs = []
    for language in ("python", "cpp", "java", "js", "go"):
        for problem in load_problems(language).values():
            docs.append(tokenizer.encode(problem["prompt"] + problem["canonical_solution"]))
    return docs


def translation_prompts(tokenizer, count: int) -> list:
    from codegeex_ms.humaneval.problems import load_problems, translation_input
    cpp = list(load_problems("cpp").values())
    py = list(load_problems("python").values())
    return [tokenizer.encode(translation_input(c, "cpp", p, "python")) for c, p in zip(cpp[:count], py[:count])]


class DenseTokenizer:
    """The real tokenizer over a dense renumbering of the token ids in ``table`` (dense id i is
    real id ``table[i]``)."""

    def __init__(self, real, table: np.ndarray):
        self.real, self.table = real, table
        self.index = {int(t): i for i, t in enumerate(table)}
        self.eod_id = self.index[real.eod_id]

    def dense(self, ids) -> list:
        return [self.index[int(t)] for t in ids]

    def decode(self, ids) -> str:
        return self.real.decode([int(self.table[i]) for i in ids])


# ---------------------------------------------------------------------------- training (PyTorch child)

def copy_sequence(docs: list, rng, length: int) -> np.ndarray:
    """``length`` dense ids: code windows, each later repeated (copy) after other code."""
    out = []
    while len(out) < length:
        doc = docs[rng.integers(len(docs))]
        a = int(rng.integers(8, 33))
        start = int(rng.integers(0, max(1, len(doc) - a)))
        window = list(doc[start:start + a])
        other = docs[rng.integers(len(docs))]
        b = int(rng.integers(2, 13))
        s2 = int(rng.integers(0, max(1, len(other) - b)))
        out += window + list(other[s2:s2 + b]) + window
    return np.array(out[:length], np.int64)


def copy_accuracy(net, docs: list, rng, real: int, windows: int = 32, size: int = 24) -> tuple:
    """Greedy next-token accuracy inside a code window at its first occurrence and where it
    recurs (``other + window + other + window``): copying shows as the second far above the first."""
    import torch
    first = second = 0
    for _ in range(windows):
        parts = []
        for n in (12, size, 12):
            doc = docs[rng.integers(len(docs))]
            start = int(rng.integers(0, max(1, len(doc) - n)))
            parts.append(list(doc[start:start + n]))
        seq = parts[0] + parts[1] + parts[2] + parts[1]
        with torch.no_grad():
            pred = net.training_logits(torch.tensor([seq]))[0, :, :real].argmax(-1).numpy()
        target = np.array(seq[1:] + [-1])
        a, b = len(parts[0]), len(parts[0]) + len(parts[1]) + len(parts[2])
        first += int((pred[a:a + size - 1] == target[a:a + size - 1]).sum())
        second += int((pred[b:b + size - 1] == target[b:b + size - 1]).sum())
    return first / (windows * (size - 1)), second / (windows * (size - 1))


def train_child(out_path: str, seconds: float, seed: int) -> None:
    import torch
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from torch_codegeex import TorchCodeGeeX

    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    real = CodeGeeXTokenizer.from_dir(None)
    docs = corpus_tokens(real)
    prompts = translation_prompts(real, 164)
    table = np.array(sorted({t for d in docs + prompts for t in d} | {real.eod_id}), np.int64)
    tok = DenseTokenizer(real, table)
    docs = [tok.dense(d) for d in docs]
    vocab = -(-len(table) // 64) * 64
    net = TorchCodeGeeX(vocab, MODEL["hidden"], MODEL["heads"], MODEL["layers"], MODEL["positions"])
    for p in net.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    t0, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < seconds:
        batch = torch.tensor(np.stack([copy_sequence(docs, rng, 97) for _ in range(12)]))
        logits = net.training_logits(batch[:, :-1])[..., :len(table)]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
    seconds = time.perf_counter() - t0
    first, second = copy_accuracy(net, docs, np.random.default_rng(seed + 1), len(table))
    state = net.mindspore_state()
    np.savez(out_path, table=table, vocab=vocab, steps=step, seconds=seconds,
             first_accuracy=first, copy_accuracy=second,
             first_loss=np.mean(losses[:10]), last_loss=np.mean(losses[-10:]),
             **{"w:" + k: v for k, v in state.items()})


# ---------------------------------------------------------------------------- MindSpore side

def load_mindspore(weights: dict):
    import mindspore as ms
    from mindspore import Tensor

    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    ms.set_context(mode=ms.GRAPH_MODE)
    vocab, real = int(weights["vocab"]), len(weights["table"])
    cfg = load_config(None, (f"model.vocab_size={vocab}", f"model.real_vocab_size={real}",
                             f"model.hidden_size={MODEL['hidden']}", f"model.num_heads={MODEL['heads']}",
                             f"model.num_layers={MODEL['layers']}", f"model.ffn_hidden_size={4 * MODEL['hidden']}",
                             f"model.max_position_embeddings={MODEL['positions']}", "model.dropout=0.0",
                             f"train.seq_length={MODEL['positions']}", f"model.eod_token_id=0"))
    net = build_model(cfg.model)
    for p in net.get_parameters():
        p.set_data(Tensor(weights["w:" + p.name]))
    net.set_train(False)
    return cfg, net


def torch_logits(weights: dict, ids: list) -> np.ndarray:
    """Logits of the PyTorch model with the same weights (run in a child: no MindSpore threads)."""
    code = ("import sys, numpy as np, torch; sys.path.insert(0, sys.argv[1]); "
            "from torch_codegeex import TorchCodeGeeX; w = np.load(sys.argv[2]); "
            "ids = np.load(sys.argv[3]); h, n, l, p = (int(x) for x in sys.argv[4:8]); "
            "net = TorchCodeGeeX(int(w['vocab']), h, n, l, p); "
            "net.load_release({'language_model': {'embedding': {'word_embeddings': {'weight': "
            "torch.tensor(w['w:language_model.embedding.word_embeddings.weight'])}, 'position_embeddings': "
            "{'weight': torch.tensor(w['w:language_model.embedding.position_embeddings.weight'])}}, "
            "'topQueryEmbedding': {'top_query_embeddings': {'weight': "
            "torch.tensor(w['w:language_model.topQueryEmbedding.top_query_embeddings.weight'])}}, "
            "'transformer': {k[len('w:language_model.transformer.'):]: torch.tensor(w[k]) for k in w.files "
            "if k.startswith('w:language_model.transformer.')}}}); net.reset(1); "
            "np.save(sys.argv[3], net(torch.tensor(ids[None]), 0)[0].numpy())")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids.npy")
        np.save(path, np.array(ids, np.int64))
        subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "bench"), weights["_path"], path,
                        *(str(MODEL[k]) for k in ("hidden", "heads", "layers", "positions"))], check=True)
        return np.load(path)


def scheduler(net, cfg, tokenizer, speculative):
    from codegeex_ms.inference.scheduler import SlotScheduler
    from codegeex_ms.model.kv_cache import SlotKVCache
    cache = SlotKVCache(net, 1, MODEL["positions"], cfg.model.eod_token_id)
    return SlotScheduler(cache, tokenizer, eod=tokenizer.eod_id, real_vocab_size=cfg.model.real_vocab_size,
                         speculative=speculative)


def greedy(sched, prompts, max_new) -> list:
    """Greedy token lists of ``prompts``, one at a time (batch 1) through ``sched``."""
    from codegeex_ms.inference.sampling import SamplingParams
    from codegeex_ms.inference.scheduler import Request
    reqs = [Request(p, max_new, SamplingParams()) for p in prompts]
    for req in reqs:
        sched.submit(req)
    sched.run()
    return [req.results[0].token_ids for req in reqs]


def timed(scheds: dict, prompts, max_new, rounds: int) -> dict:
    """way -> (tokens, best seconds, stats of one run): every scheduler runs once to compile, then
    ``rounds`` times, the ways alternating (a loaded machine slows them alike)."""
    out = {}
    for way, sched in scheds.items():
        greedy(sched, prompts, max_new)
    for _ in range(rounds):
        for way, sched in scheds.items():
            before = vars(sched.stats).copy()
            t0 = time.perf_counter()
            tokens = greedy(sched, prompts, max_new)
            seconds = time.perf_counter() - t0
            stats = {k: v - before[k] for k, v in vars(sched.stats).items()}
            best = out.get(way, (None, float("inf"), None))[1]
            out[way] = (tokens, min(seconds, best), stats)
    return out


def step_costs(net, cfg, ks) -> dict:
    """ms of a pool forward of S = 1 and S = k + 1 tokens (batch 1, mid-cache): the best of five
    alternating rounds' medians."""
    from codegeex_ms.model.kv_cache import SlotKVCache
    cache = SlotKVCache(net, 1, MODEL["positions"], cfg.model.eod_token_id)
    sizes = [1] + [k + 1 for k in ks]
    for s in sizes:
        cache.forward(np.full((1, s), 5, np.int32), np.array([200]), pick_all=s > 1)
    out = {s: float("inf") for s in sizes}
    for _ in range(5):
        for s in sizes:
            tok = np.full((1, s), 5, np.int32)
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                cache.forward(tok, np.array([200]), pick_all=s > 1)
                times.append(time.perf_counter() - t0)
            out[s] = min(out[s], 1e3 * float(np.median(times)))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_train:
        train_child(args.child_train, args.train_seconds, args.seed)
        return 0
    ks = [int(k) for k in args.draft_tokens.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.weights
        if path is None:
            path = args.keep_weights or os.path.join(tmp, "copy_model.npz")
            subprocess.run([sys.executable, __file__, "--child-train", path, "--train-seconds",
                            str(args.train_seconds), "--seed", str(args.seed)], check=True)
        weights = dict(np.load(path))
        weights["_path"] = path
        from codegeex_ms.inference.speculative import PromptLookup
        from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
        tokenizer = DenseTokenizer(CodeGeeXTokenizer.from_dir(None), weights["table"])
        room = MODEL["positions"] - args.max_new - max(ks) - 1
        prompts = [tokenizer.dense(p)[-room:] for p in translation_prompts(tokenizer.real, args.prompts)]
        reference = torch_logits(weights, prompts[0][:64])
        cfg, net = load_mindspore(weights)
        from codegeex_ms.score import full_logits
        ms_logits = full_logits(net, np.array([prompts[0][:64]], np.int32))[0]
        agreement = float(np.abs(ms_logits - reference).max())
        ways = {"plain greedy": scheduler(net, cfg, tokenizer, None)}
        ways.update({f"prompt lookup k={k}": scheduler(net, cfg, tokenizer, PromptLookup(k)) for k in ks})
        results = timed(ways, prompts, args.max_new, args.rounds)
        plain, t_plain, _ = results["plain greedy"]
        tokens = sum(len(t) for t in plain)
        rows = [{"way": way, "seconds": sec, "identical": sum(a == b for a, b in zip(plain, toks)),
                 "accepted": st["spec_accepted"], "proposed": st["spec_proposed"], "steps": st["decode_steps"]}
                for way, (toks, sec, st) in results.items()]
        costs = step_costs(net, cfg, ks)
    print(f"\ncopy-trained model: hidden {MODEL['hidden']}, {MODEL['layers']}+1 layers, vocabulary "
          f"{len(weights['table'])} ids; trained {float(weights['seconds']):.0f} s, {int(weights['steps'])} steps, "
          f"loss {float(weights['first_loss']):.2f} -> {float(weights['last_loss']):.2f}, next-token accuracy in a "
          f"code window {float(weights['first_accuracy']):.0%} at first, {float(weights['copy_accuracy']):.0%} where it "
          f"recurs; MindSpore vs PyTorch "
          f"logits max |diff| {agreement:.1e}; {os.cpu_count()} CPUs (shared with other jobs)")
    print(f"greedy at batch 1, {len(prompts)} C++ -> Python translation prompts, {args.max_new} new tokens "
          f"each ({tokens} tokens); best of {args.rounds} alternating runs")
    print(f"{'way':>20} {'seconds':>8} {'tok/s':>7} {'speedup':>8} {'identical':>10} {'accepted':>10} {'steps':>6}")
    for r in rows:
        print(f"{r['way']:>20} {r['seconds']:8.2f} {tokens / r['seconds']:7.1f} {t_plain / r['seconds']:7.2f}x "
              f"{r['identical']:>5}/{len(plain)} {r['accepted']:>4}/{r['proposed']:<5} {r['steps']:>6}")
    print("forward cost, ms (batch 1): " + ", ".join(
        f"S={s}: {ms:.2f} ({ms / costs[1]:.2f}x)" for s, ms in costs.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": platform.platform(), "cpus": os.cpu_count(), "model": MODEL,
            "vocabulary": len(weights["table"]), "train_seconds": float(weights["seconds"]),
            "train_steps": int(weights["steps"]), "loss": [float(weights["first_loss"]), float(weights["last_loss"])],
            "window_accuracy_first": float(weights["first_accuracy"]),
            "window_accuracy_recurring": float(weights["copy_accuracy"]),
            "logits_max_diff_vs_torch": agreement, "tokens": tokens, "rows": rows,
            "forward_ms": {str(s): ms for s, ms in costs.items()}}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
