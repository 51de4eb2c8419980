"""Training-step throughput and model-FLOPs utilisation on this machine.

Runs the full optimizer step of ``codegeex_ms.train`` (forward, backward, loss scaling, overflow
check, clipping, AdamWeightDecay) in graph mode on synthetic batches of the given config
(default: ascend_configs/small.yaml, hidden 512, 4 + 1 layers, seq 256, micro-batch 4, FP32) and
prints, per dropout variant, the compile time, median step time, tokens/s and MFU against the
measured peak of a 2048³ MindSpore MatMul in the compute dtype (best of runs before and after
the variants, since the machine may be shared), printed beside it.

    python bench/bench_train.py [--config small] [--steps 5] [--variants stateless,native,off]
                                [--set section.key=value ...] [--json PATH]
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GLOG_v", "3")

from codegeex_ms.config import add_config_args, config_from_args  # noqa: E402

VARIANTS = {
    "stateless": "dropout with resume-exact (stateless) masks: the CPU default",
    "native": "MindSpore's nn.Dropout (stateful masks)",
    "off": "no dropout",
}


def synthetic_batch(cfg, rng):
    b, s = cfg.train.micro_batch_size, cfg.train.seq_length
    tokens = rng.integers(0, cfg.model.real_vocab_size, size=(b, s + 1), dtype=np.int32)
    causal = np.broadcast_to(np.tril(np.ones((s, s), np.uint8)), (b, s, s)).copy()
    return (tokens[:, :-1], tokens[:, 1:], np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
            causal, np.ones((b, s), np.float32))


def bench_variant(cfg, variant, steps, rng):
    from codegeex_ms.train.distributed import Topology
    from codegeex_ms.train.loop import Trainer

    model = dataclasses.replace(cfg.model, dropout=0.0 if variant == "off" else cfg.model.dropout)
    train = dataclasses.replace(cfg.train, dropout_rng="native" if variant == "native" else "stateless")
    cfg = dataclasses.replace(cfg, model=model, train=train)
    trainer = Trainer(cfg, Topology(), "CPU")
    accum = cfg.train.grad_accumulation
    start = time.perf_counter()
    trainer.run_step([synthetic_batch(cfg, rng) for _ in range(accum)], 0)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(steps):
        batches = [synthetic_batch(cfg, rng) for _ in range(accum)]
        start = time.perf_counter()
        trainer.run_step(batches, (i + 1) * accum)
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one "
                                                             "compile/warm-up step)")
    parser.add_argument("--variants", default="stateless,native,off",
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = "small"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    import mindspore as ms
    from codegeex_ms.config import global_batch_size
    from codegeex_ms.train.metrics import flops_per_token, measure_matmul_peak

    cfg = config_from_args(args)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(cfg.train.seed)
    peaks = [measure_matmul_peak(cfg.model.compute_dtype, repeats=10)]
    m, t = cfg.model, cfg.train
    tokens = global_batch_size(cfg) * t.seq_length
    flops = flops_per_token(m, t.seq_length) * tokens
    rng = np.random.default_rng(0)
    rows = []
    for variant in variants:
        compile_s, step_s = bench_variant(cfg, variant, args.steps, rng)
        rows.append({"variant": variant, "compile_s": compile_s, "step_s": step_s,
                     "tokens_per_s": tokens / step_s, "model_tflops": flops / step_s / 1e12,
                     "mfu": None})
    peaks.append(measure_matmul_peak(cfg.model.compute_dtype, repeats=10))
    peak = max(peaks)  # best observed: the machine may be shared
    for r in rows:
        r["mfu"] = r["model_tflops"] * 1e12 / peak

    print(f"config: hidden {m.hidden_size}, {m.num_layers}+1 layers, heads {m.num_heads}, ffn "
          f"{m.ffn_hidden_size}, vocab {m.vocab_size}, seq {t.seq_length}, batch "
          f"{global_batch_size(cfg)}, {m.compute_dtype}, recompute {cfg.parallel.recompute}; "
          f"{tokens} tokens and {flops / 1e9:.1f} model GFLOP per step")
    print(f"measured peak: {peak / 1e9:.1f} GFLOP/s ({m.compute_dtype} 2048x2048x2048 MatMul, graph mode; "
          f"best of before/after: {', '.join(f'{p / 1e9:.1f}' for p in peaks)})")
    header = f"{'variant':<10} {'compile s':>9} {'step s':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<10} {r['compile_s']:>9.1f} {r['step_s']:>8.3f} {r['tokens_per_s']:>9.0f} "
              f"{r['model_tflops'] * 1e3:>8.1f} {r['mfu']:>7.1%}")
    if args.json:
        result = {"config": dataclasses.asdict(cfg), "tokens_per_step": tokens,
                  "model_flops_per_step": flops, "matmul_peak_flops": peak,
                  "matmul_peak_samples": peaks, "steps": args.steps,
                  "variants": {k: VARIANTS[k] for k in variants}, "rows": rows}
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
