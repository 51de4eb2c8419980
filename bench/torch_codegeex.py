"""A PyTorch CodeGeeX written for the benchmarks from the architecture in the reference document
(``docs/CODEGEEX_REFERENCE.md`` section 1), with a KV cache; ``tests/test_torch_codegeex.py``
proves it is the same model by reproducing the golden fixture. Run as a script it compares
decode time per token at batch 1 (and a 512-token prefill) with this project's MindSpore model
at the same shapes and random weights:

    python bench/torch_codegeex.py [--json PATH] [--sizes 40M,168M] [--steps 48] [--rounds 3]

Each framework runs in its own child process (MindSpore's runtime threads would otherwise take
CPU from PyTorch's), the two alternating for ``--rounds`` rounds (PyTorch once per thread count
in ``--torch-threads``); each figure is the best run's median step. The MindSpore side decodes
through the slot cache the generator uses
(``SlotKVCache.forward``: host inputs in, last-position logits out as NumPy), the PyTorch side
through its own cache (logits of the fed token only). Reported: ms per decode step for both,
their ratio, and each one's fraction of the weight-bandwidth bound (weight bytes read per step /
measured memory copy bandwidth: the least time a step that reads every weight once can take).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GLOG_v", "3")


def fast_gelu(x):
    return x / (1 + torch.exp(-1.702 * x.abs())) * torch.exp(0.851 * (x - x.abs()))


class Block(nn.Module):
    """Pre-LN block; ``top_query``: queries from the top-query position embedding."""

    def __init__(self, h, ffn, heads, eps):
        super().__init__()
        self.heads = heads
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.query, self.key, self.value, self.dense = (nn.Linear(h, h) for _ in range(4))
        self.dense_h_to_4h, self.dense_4h_to_h = nn.Linear(h, ffn), nn.Linear(ffn, h)

    def _heads(self, x):
        b, s, h = x.shape
        return x.view(b, s, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, h, cache, start, query_emb=None):
        """``h`` [B,S,H] at positions start..start+S-1; ``cache`` (k, v) [B,N,T,D] written in place."""
        normed = self.input_layernorm(h)
        q = self._heads(self.query(query_emb if query_emb is not None else normed))
        k_cache, v_cache = cache
        s = h.shape[1]
        k_cache[:, :, start:start + s] = self._heads(self.key(normed))
        v_cache[:, :, start:start + s] = self._heads(self.value(normed))
        k, v = k_cache[:, :, :start + s], v_cache[:, :, :start + s]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        blocked = torch.ones(s, start + s, dtype=torch.bool).triu(start + 1)
        probs = torch.softmax(scores - 10000.0 * blocked, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(h.shape)
        x = h + self.dense(ctx)
        return x + self.dense_4h_to_h(fast_gelu(self.dense_h_to_4h(self.post_attention_layernorm(x))))


# release name of a block's parameter (after ``transformer.<prefix>.``) -> this model's attribute
BLOCK_NAMES = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
               "attention.query": "query", "attention.key": "key", "attention.value": "value",
               "attention.dense": "dense", "mlp.dense_h_to_4h": "dense_h_to_4h", "mlp.dense_4h_to_h": "dense_4h_to_h"}


class TorchCodeGeeX(nn.Module):
    """``forward(ids [B,S], start)`` → FP32 logits [B,S,V]; positions start..start+S-1, keys and
    values kept in a cache of ``max_positions`` slots (call :meth:`reset` for a new batch)."""

    def __init__(self, vocab, hidden, heads, layers, max_positions, ffn=None, eps=1e-5):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_positions, hidden)
        self.top_query = nn.Embedding(max_positions, hidden)
        self.layers = nn.ModuleList(Block(hidden, ffn or 4 * hidden, heads, eps) for _ in range(layers))
        self.top = Block(hidden, ffn or 4 * hidden, heads, eps)
        self.final_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.heads, self.max_positions = heads, max_positions
        self.caches = None

    def reset(self, batch):
        h = self.word.weight.shape[1]
        shape = (batch, self.heads, self.max_positions, h // self.heads)
        self.caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(len(self.layers) + 1)]

    @torch.no_grad()
    def forward(self, ids, start=0):
        return self._logits(ids, start, self.caches)

    def training_logits(self, ids):
        """FP32 logits [B,S,V] of a causal forward from position 0, differentiable (own caches)."""
        shape = (ids.shape[0], self.heads, ids.shape[1], self.word.weight.shape[1] // self.heads)
        caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(len(self.layers) + 1)]
        return self._logits(ids, 0, caches)

    def _logits(self, ids, start, caches):
        pos = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
        h = self.word(ids) + self.pos(pos)
        for layer, cache in zip(self.layers, caches):
            h = layer(h, cache, start)
        h = self.top(self.final_layernorm(h), caches[-1], start, self.top_query(pos))
        return h @ self.word.weight.T

    def load_release(self, module: dict) -> None:
        """Copy weights from a release-layout ``["module"]`` dict (any float dtype)."""
        lm = module["language_model"]
        f = lambda t: t.float()  # noqa: E731
        self.word.weight.data = f(lm["embedding"]["word_embeddings"]["weight"])
        self.pos.weight.data = f(lm["embedding"]["position_embeddings"]["weight"])
        self.top_query.weight.data = f(lm["topQueryEmbedding"]["top_query_embeddings"]["weight"])
        tr = lm["transformer"]
        blocks = [(f"layers.{i}", b) for i, b in enumerate(self.layers)] + [("topQueryLayer", self.top)]
        for prefix, block in blocks:
            for src, dst in BLOCK_NAMES.items():
                mod = getattr(block, dst)
                mod.weight.data = f(tr[f"{prefix}.{src}.weight"])
                mod.bias.data = f(tr[f"{prefix}.{src}.bias"])
        self.final_layernorm.weight.data = f(tr["final_layernorm.weight"])
        self.final_layernorm.bias.data = f(tr["final_layernorm.bias"])

    def mindspore_state(self) -> dict:
        """FP32 NumPy arrays named like the MindSpore model's parameters (``load_release``'s inverse)."""
        lm, tr = "language_model.", "language_model.transformer."
        out = {lm + "embedding.word_embeddings.weight": self.word.weight,
               lm + "embedding.position_embeddings.weight": self.pos.weight,
               lm + "topQueryEmbedding.top_query_embeddings.weight": self.top_query.weight,
               tr + "final_layernorm.weight": self.final_layernorm.weight,
               tr + "final_layernorm.bias": self.final_layernorm.bias}
        blocks = [(f"layers.{i}", b) for i, b in enumerate(self.layers)] + [("topQueryLayer", self.top)]
        for prefix, block in blocks:
            for dst, src in BLOCK_NAMES.items():
                mod = getattr(block, src)
                out[f"{tr}{prefix}.{dst}.weight"] = mod.weight
                out[f"{tr}{prefix}.{dst}.bias"] = mod.bias
        return {k: v.detach().float().numpy().copy() for k, v in out.items()}


# ---------------------------------------------------------------------------- the benchmark

SIZES = {"40M": dict(hidden=512, heads=8, layers=8), "168M": dict(hidden=1024, heads=16, layers=12)}
VOCAB, POSITIONS = 52224, 1024


def copy_bandwidth(nbytes=256 << 20, repeats=5) -> float:
    """Bytes per second of a large memory copy (read + write counted once each)."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def weight_bytes(size: dict) -> int:
    """FP32 bytes one decode step reads: every weight once, one row of each position table."""
    h, layers = size["hidden"], size["layers"] + 1
    per_layer = 4 * (h * h + h) + 2 * (4 * h * h) + 4 * h + h + 4 * h   # q,k,v,dense; mlp; 2 LN
    return 4 * (VOCAB * h + layers * per_layer + 2 * h + 2 * h)


def _median_ms(fn, steps: int) -> float:
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def child_mindspore(name: str, steps: int, prefill: int, threads: int) -> dict:
    """Median decode ms/step and prefill ms of the MindSpore model through ``SlotKVCache``."""
    import mindspore as ms

    from codegeex_ms.config import load_config
    from codegeex_ms.model.build import build_model
    from codegeex_ms.model.kv_cache import SlotKVCache
    size = SIZES[name]
    cfg = load_config(None, (f"model.vocab_size={VOCAB}", f"model.real_vocab_size={VOCAB}",
                             f"model.hidden_size={size['hidden']}", f"model.num_heads={size['heads']}",
                             f"model.num_layers={size['layers']}", f"model.ffn_hidden_size={4 * size['hidden']}",
                             f"model.max_position_embeddings={POSITIONS}", "model.dropout=0.0",
                             f"train.seq_length={POSITIONS}"))
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=threads)
    net = build_model(cfg.model)
    net.set_train(False)
    cache = SlotKVCache(net, 1, POSITIONS, 0)
    prompt = list(np.random.default_rng(0).integers(1, VOCAB, size=prefill))
    cache.prefill([prompt], [[0]])                      # compiles
    t0 = time.perf_counter()
    cache.prefill([prompt], [[0]])
    prefill_ms = 1e3 * (time.perf_counter() - t0)
    tok = np.array([[5]], np.int32)
    cache.forward(tok, np.array([prefill]))             # compiles
    decode_ms = _median_ms(lambda i: cache.forward(tok, np.array([prefill + i])), steps)
    return {"decode_ms": decode_ms, "prefill_ms": prefill_ms}


def child_torch(name: str, steps: int, prefill: int, threads: int) -> dict:
    """Median decode ms/step and prefill ms of :class:`TorchCodeGeeX`."""
    size = SIZES[name]
    torch.set_num_threads(threads)
    net = TorchCodeGeeX(VOCAB, size["hidden"], size["heads"], size["layers"], POSITIONS).eval()
    net.reset(1)
    ids = torch.tensor([list(np.random.default_rng(0).integers(1, VOCAB, size=prefill))])
    net(ids, 0)
    t0 = time.perf_counter()
    net(ids, 0)
    prefill_ms = 1e3 * (time.perf_counter() - t0)
    tok = torch.tensor([[5]])
    net(tok, prefill)
    decode_ms = _median_ms(lambda i: net(tok, prefill + i)[:, -1].numpy(), steps)
    return {"decode_ms": decode_ms, "prefill_ms": prefill_ms}


def run_child(framework: str, name: str, args, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", framework, "--sizes", name, "--steps", str(args.steps),
           "--prefill", str(args.prefill), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="40M,168M")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each framework")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="MindSpore runtime threads")
    parser.add_argument("--torch-threads", default=f"1,{os.cpu_count()}",
                        help="PyTorch thread counts to try each round (the best one is reported: with 2 "
                             "threads on a loaded 2-core machine PyTorch's barriers stall it 2-30x)")
    parser.add_argument("--child", choices=("mindspore", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    if args.child:
        fn = child_mindspore if args.child == "mindspore" else child_torch
        print(json.dumps(fn(args.sizes, args.steps, args.prefill, args.threads)))
        return 0
    bandwidth = copy_bandwidth()
    rows = []
    for name in args.sizes.split(","):
        runs = {"mindspore": [], "torch": []}
        for _ in range(args.rounds):
            runs["mindspore"].append(run_child("mindspore", name, args, args.threads))
            for threads in (int(t) for t in args.torch_threads.split(",")):
                runs["torch"].append(dict(run_child("torch", name, args, threads), threads=threads))
        best = {f: {k: min(r[k] for r in rs) for k in ("decode_ms", "prefill_ms")} for f, rs in runs.items()}
        rows.append({"size": name, "weight_bytes": weight_bytes(SIZES[name]), "runs": runs,
                     "mindspore_decode_ms": best["mindspore"]["decode_ms"],
                     "torch_decode_ms": best["torch"]["decode_ms"],
                     "mindspore_prefill_ms": best["mindspore"]["prefill_ms"],
                     "torch_prefill_ms": best["torch"]["prefill_ms"]})
    bandwidth = max(bandwidth, copy_bandwidth())
    print(f"\nbatch 1, FP32, MindSpore {args.threads} threads, PyTorch best of {args.torch_threads} threads, {os.cpu_count()} CPUs (shared with other jobs), "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; bound = weight bytes / bandwidth; "
          f"best of {args.rounds} alternating rounds, median of {args.steps} steps")
    print(f"{'size':>5} {'weights':>8} {'bound ms':>8} {'MS ms/tok':>10} {'torch ms/tok':>12} {'torch/MS':>8} "
          f"{'MS % bound':>10} {'torch % bound':>13} {'MS prefill ms':>13} {'torch prefill ms':>16} {'torch/MS':>8}")
    for r in rows:
        bound_ms = 1e3 * r["weight_bytes"] / bandwidth
        r["bound_ms"] = bound_ms
        print(f"{r['size']:>5} {r['weight_bytes'] / 1e6:6.0f}MB {bound_ms:8.2f} {r['mindspore_decode_ms']:10.2f} "
              f"{r['torch_decode_ms']:12.2f} {r['torch_decode_ms'] / r['mindspore_decode_ms']:7.2f}x "
              f"{100 * bound_ms / r['mindspore_decode_ms']:9.0f}% {100 * bound_ms / r['torch_decode_ms']:12.0f}% "
              f"{r['mindspore_prefill_ms']:13.1f} {r['torch_prefill_ms']:16.1f} "
              f"{r['torch_prefill_ms'] / r['mindspore_prefill_ms']:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                               "threads": args.threads, "torch_threads": args.torch_threads,
                                               "copy_bandwidth": bandwidth,
                                               "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
