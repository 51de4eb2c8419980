"""Training-step throughput of this project against PyTorch at the same shapes, side by side.

The project's full optimizer step (``codegeex_ms.train``: forward, backward, loss scaling,
overflow check, global-norm clipping, AdamWeightDecay; graph mode) and a PyTorch CodeGeeX step
(the benchmark model of ``bench/torch_codegeex.py`` run through :func:`torch_train_forward`,
masked cross-entropy, ``clip_grad_norm_``, ``torch.optim.AdamW``) start from the same weights and
train on the same synthetic batches. Both use FP32 and the same number of threads. The steps are
interleaved A/B in rounds (``--rounds`` × ``--steps`` timed steps each, the order alternating per
round) so a shared machine's load falls on both alike.

Printed per shape and dropout setting: median step time, tokens/s, achieved model GFLOP/s, the
fraction of the measured GEMM peak (a 2048³ FP32 MatMul, best of measurements before and after),
the ratio project/PyTorch (median of the per-round ratios) and its spread (min–max over rounds),
the cores each side kept busy (process CPU time / wall time) and the machine's 1-minute load
average over the run (other jobs on a shared machine slow both sides, not necessarily alike).

    python bench/bench_train.py [--shapes small,medium] [--dropout off,on] [--rounds 4]
                                [--steps 3] [--threads 2] [--json PATH]

Shapes: ``small`` = hidden 512, 4 layers + top-query, 8 heads, FFN 2048, seq 256, micro-batch 4,
vocabulary 8192; ``medium`` = the same with hidden 1024, 8 layers, 16 heads, FFN 4096.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
os.environ.setdefault("GLOG_v", "3")

from torch_codegeex import TorchCodeGeeX  # noqa: E402

MASK_PENALTY = 10000.0
SHAPES = {
    "small": dict(hidden=512, layers=4, heads=8),
    "medium": dict(hidden=1024, layers=8, heads=16),
}
BASE = dict(vocab=8192, seq=256, batch=4)


# ------------------------------------------------------------------- PyTorch training forward

def _block_train_forward(block, h, blocked, p, query_emb=None):
    """One pre-LN block of ``bench/torch_codegeex.Block`` without a KV cache, with dropout ``p``
    on the embedding-free sites of CodeGeeX (attention probabilities, attention output, MLP
    output). ``h`` [B,S,H]; ``blocked`` [S,S] bool (True = may not attend)."""
    normed = block.input_layernorm(h)
    q = block._heads(block.query(query_emb if query_emb is not None else normed))  # pylint: disable=protected-access
    k = block._heads(block.key(normed))  # pylint: disable=protected-access
    v = block._heads(block.value(normed))  # pylint: disable=protected-access
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = F.dropout(torch.softmax(scores - MASK_PENALTY * blocked, dim=-1), p, block.training)
    ctx = (probs @ v).transpose(1, 2).reshape(h.shape)
    x = h + F.dropout(block.dense(ctx), p, block.training)
    a = block.dense_h_to_4h(block.post_attention_layernorm(x))
    mlp = block.dense_4h_to_h(a * torch.sigmoid(1.702 * a))  # FastGELU
    return x + F.dropout(mlp, p, block.training)


def torch_train_forward(net: TorchCodeGeeX, ids: torch.Tensor, p: float = 0.0) -> torch.Tensor:
    """Differentiable full causal forward of the benchmark's PyTorch CodeGeeX: ``ids`` [B,S]
    int64 → FP32 logits [B,S,V], positions 0..S-1, dropout ``p`` (active in ``net.train()``)."""
    s = ids.shape[1]
    pos = torch.arange(s).unsqueeze(0)
    blocked = torch.ones(s, s, dtype=torch.bool).triu(1)
    h = F.dropout(net.word(ids) + net.pos(pos), p, net.training)
    for layer in net.layers:
        h = _block_train_forward(layer, h, blocked, p)
    h = _block_train_forward(net.top, net.final_layernorm(h), blocked, p, net.top_query(pos))
    return h @ net.word.weight.T


def torch_loss(net, ids, labels, loss_mask, p=0.0):
    """Masked mean next-token cross-entropy (the project's ``CrossEntropy``), FP32 scalar."""
    logits = torch_train_forward(net, ids, p)
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    mask = loss_mask.reshape(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def release_module(weights: dict) -> dict:
    """The project's ``{release name: array}`` weights as the nested ``["module"]`` dict that
    :meth:`TorchCodeGeeX.load_release` reads."""
    t = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    p = "language_model."
    return {"language_model": {
        "embedding": {"word_embeddings": {"weight": t[p + "embedding.word_embeddings.weight"]},
                      "position_embeddings": {"weight": t[p + "embedding.position_embeddings.weight"]}},
        "topQueryEmbedding": {"top_query_embeddings": {
            "weight": t[p + "topQueryEmbedding.top_query_embeddings.weight"]}},
        "transformer": {k[len(p + "transformer."):]: v for k, v in t.items()
                        if k.startswith(p + "transformer.")}}}


class TorchTrainer:
    """PyTorch step: forward, masked cross-entropy, backward, ``clip_grad_norm_``, ``AdamW``
    (weight decay on everything but LayerNorms and biases, as the project)."""

    def __init__(self, cfg, weights: dict):
        m, t = cfg.model, cfg.train
        self.p = m.dropout
        self.net = TorchCodeGeeX(m.vocab_size, m.hidden_size, m.num_heads, m.num_layers,
                                 m.max_position_embeddings, m.ffn_hidden_size, m.layernorm_epsilon)
        self.net.load_release(release_module(weights))
        self.net.train()
        decay = [p for n, p in self.net.named_parameters() if n.endswith("weight") and "layernorm" not in n]
        no_decay = [p for n, p in self.net.named_parameters() if not (n.endswith("weight") and "layernorm" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
        self.clip = t.grad_clip

    def run_step(self, batch) -> float:
        ids, labels, _, _, loss_mask = (torch.from_numpy(np.asarray(c)) for c in batch)
        self.opt.zero_grad(set_to_none=True)
        loss = torch_loss(self.net, ids.long(), labels.long(), loss_mask, self.p)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        return float(loss.detach())


# ------------------------------------------------------------------------------ the benchmark

def shape_config(name, dropout):
    from codegeex_ms.config import load_config  # pylint: disable=import-outside-toplevel
    s = {**SHAPES[name], **BASE}
    return load_config(str(REPO_ROOT / "ascend_configs" / "small.yaml"), (
        f"model.vocab_size={s['vocab']}", f"model.real_vocab_size={s['vocab']}",
        f"model.hidden_size={s['hidden']}", f"model.num_layers={s['layers']}",
        f"model.num_heads={s['heads']}", f"model.ffn_hidden_size={4 * s['hidden']}",
        f"model.max_position_embeddings={s['seq']}", f"model.dropout={0.1 if dropout else 0.0}",
        f"model.eod_token_id={s['vocab'] - 1}", f"inference.max_length={s['seq']}",
        f"train.seq_length={s['seq']}", f"train.micro_batch_size={s['batch']}",
        "train.grad_accumulation=1", "train.dropout_rng=stateless"))


def synthetic_batch(cfg, rng):
    """``(input_ids, labels, position_ids, causal mask, loss_mask)`` NumPy arrays."""
    from codegeex_ms.data.masks import causal_mask, positions  # pylint: disable=import-outside-toplevel
    b, s = cfg.train.micro_batch_size, cfg.train.seq_length
    tokens = rng.integers(0, cfg.model.real_vocab_size, size=(b, s + 1), dtype=np.int32)
    return (tokens[:, :-1].copy(), tokens[:, 1:].copy(), positions(b, s), causal_mask(b, s),
            np.ones((b, s), np.float32))


def timed(fn):
    """``(wall seconds, process CPU seconds (all threads), fn())``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def bench_case(shape, dropout, rounds, steps, seed=0):
    """Interleaved rounds of ``steps`` project steps and ``steps`` PyTorch steps (after one
    untimed compile/warm-up step each). Returns a result row."""
    from codegeex_ms.train.distributed import Topology  # pylint: disable=import-outside-toplevel
    from codegeex_ms.train.loop import Trainer  # pylint: disable=import-outside-toplevel
    cfg = shape_config(shape, dropout)
    rng = np.random.default_rng(seed)
    ms_trainer = Trainer(cfg, Topology(), "CPU")
    pt_trainer = TorchTrainer(cfg, ms_trainer.model_weights())
    first = synthetic_batch(cfg, rng)
    compile_s, _, (ms_loss0, *_) = timed(lambda: ms_trainer.run_step([first], 0))
    _, _, pt_loss0 = timed(lambda: pt_trainer.run_step(first))
    micro = 1
    times = {"project": [], "torch": []}
    cpu = {"project": [], "torch": []}
    ratios = []
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        batches = [synthetic_batch(cfg, rng) for _ in range(steps)]
        per = {"project": [], "torch": []}
        order = ("project", "torch") if r % 2 == 0 else ("torch", "project")
        for side in order:
            for i, batch in enumerate(batches):
                if side == "project":
                    dt, dc, _ = timed(lambda b=batch, k=micro + i: ms_trainer.run_step([b], k))
                else:
                    dt, dc, _ = timed(lambda b=batch: pt_trainer.run_step(b))
                per[side].append(dt)
                cpu[side].append(dc)
        micro += steps
        for side in per:
            times[side].extend(per[side])
        ratios.append(statistics.median(per["torch"]) / statistics.median(per["project"]))
        load.append(os.getloadavg()[0])
    m, t = cfg.model, cfg.train
    tokens = t.micro_batch_size * t.seq_length
    from codegeex_ms.budget.training import flops_per_token  # pylint: disable=import-outside-toplevel
    flops = flops_per_token(m, t.seq_length) * tokens
    row = {"shape": shape, "dropout": m.dropout, "hidden": m.hidden_size, "layers": m.num_layers,
           "heads": m.num_heads, "vocab": m.vocab_size, "seq": t.seq_length, "batch": t.micro_batch_size,
           "tokens_per_step": tokens, "model_flops_per_step": flops, "compile_s": compile_s,
           "first_loss": {"project": ms_loss0, "torch": pt_loss0}, "rounds": rounds, "steps": steps,
           "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "ratios": ratios, "load_avg_1min": load}
    for side, ts in times.items():
        step_s = statistics.median(ts)
        row[side] = {"step_s": step_s, "step_s_min": min(ts), "step_s_max": max(ts),
                     "tokens_per_s": tokens / step_s, "gflops": flops / step_s / 1e9,
                     "cores_used": statistics.median(c / t for c, t in zip(cpu[side], ts))}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,medium", help=f"subset of {', '.join(SHAPES)}")
    parser.add_argument("--dropout", default="off,on", help="off, on or both (rate 0.1, stateless masks)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved A/B rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    parser.add_argument("--threads", type=int, default=2, help="threads for both frameworks")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    drops = [d for d in args.dropout.split(",") if d]
    bad = sorted(set(shapes) - set(SHAPES)) + sorted(set(drops) - {"off", "on"})
    if bad:
        parser.error(f"unknown shape/dropout value(s) {bad}")

    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from codegeex_ms.train.metrics import measure_matmul_peak  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=args.threads)
    ms.set_device("CPU")
    ms.set_seed(0)
    torch.manual_seed(0)
    peaks = [measure_matmul_peak("float32", repeats=5)]
    rows = [bench_case(s, d == "on", args.rounds, args.steps) for s in shapes for d in drops]
    peaks.append(measure_matmul_peak("float32", repeats=5))
    peak = max(peaks)
    print(f"FP32, {args.threads} threads each, {args.rounds} interleaved rounds x {args.steps} steps per "
          f"side; GEMM peak {peak / 1e9:.1f} GFLOP/s (2048^3 MatMul; {', '.join(f'{p / 1e9:.1f}' for p in peaks)})")
    head = (f"{'shape':<7} {'drop':>4} {'side':<8} {'step s':>7} {'min-max s':>12} {'tok/s':>6} "
            f"{'GFLOP/s':>8} {'% peak':>6} {'cores':>5} {'ratio (min-max)':>18} {'load':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for side in ("project", "torch"):
            x = r[side]
            x["peak_fraction"] = x["gflops"] * 1e9 / peak
            ratio = (f"{r['ratio_median']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
                     if side == "project" else "")
            load = f"{min(r['load_avg_1min']):.1f}-{max(r['load_avg_1min']):.1f}" if side == "project" else ""
            print(f"{r['shape']:<7} {r['dropout']:>4} {side:<8} {x['step_s']:>7.3f} "
                  f"{x['step_s_min']:>5.2f}-{x['step_s_max']:<5.2f} {x['tokens_per_s']:>6.0f} "
                  f"{x['gflops']:>8.1f} {x['peak_fraction']:>6.1%} {x['cores_used']:>5.2f} {ratio:>18} {load:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "matmul_peak_flops": peak,
                                               "matmul_peak_samples": peaks, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
