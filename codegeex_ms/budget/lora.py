"""Per-device memory of LoRA fine-tuning on one device (what ``plan`` prints when ``lora.rank > 0``).

Units: bytes; GiB = 2**30 bytes. Notation as in ``plan``: b micro-batch, s sequence, h hidden,
f FFN width, a heads, L = layers + top-query layer, V vocabulary rows, c bytes of the compute
dtype, m = 1 byte of dropout mask (0 without dropout). One device: no model or data parallelism.
"""

import dataclasses

from codegeex_ms.budget.inference import GIB, weight_bytes
from codegeex_ms.budget.training import LOSS_FP32_TENSORS, layer_activation_bytes
from codegeex_ms.checkpoint.layout import model_parameters
from codegeex_ms.config import DTYPE_BYTES

BASES = ("float16", "int8")

ASSUMPTIONS = [
    "Frozen base, resident for the whole run: FP16 = 2 bytes per parameter; INT8 = 1 byte per "
    "linear weight + one FP32 scale per output row, embeddings/LayerNorms/biases FP16. No base "
    "gradients and no base optimizer state.",
    "Adapters (r·(in + out) per adapted Linear) in FP32: weights 4, gradients 4, Adam m and v 8 "
    "bytes per parameter (+4 with gradient accumulation).",
    "Activations with recompute (every layer): each layer keeps its input c·s·b·h; one layer's full "
    "activations are live again during its backward: s·b·h·(4c + 2m) + 12c·s·b·h + (4 + m + c)·a·s²·b "
    "(as plan), plus per adapted Linear the FP32 adapter input and its dropout mask, (4 + m)·s·b·in, "
    "and the rank-r intermediate 4·s·b·r. Without recompute all L layers hold that.",
    "INT8 base: a Linear's weight is dequantized (FP32, then cast to the compute dtype) when it "
    "runs; with recompute only the Linear being computed holds such a copy, at most (4 + c)·h·f "
    "(dense_h_to_4h); without recompute every other layer keeps its compute-dtype copy "
    "c·(4h² + 2hf) for the backward.",
    "Outside the layers: embedding dropout mask, top-query embedding, final-LayerNorm and head inputs "
    "(m + 3c)·s·b·h; logits (c + 12)·b·s·V at the loss; workspace 2c·s·b·h plus the reserve.",
]


def layer_linears(model_cfg, lora_cfg) -> list:
    """``[(in, out)]`` of the adapted Linears of one layer."""
    h, f = model_cfg.hidden_size, model_cfg.ffn_hidden_size
    shapes = {"query": (h, h), "key": (h, h), "value": (h, h), "dense": (h, h),
              "dense_h_to_4h": (h, f), "dense_4h_to_h": (f, h)}
    return [shapes[t] for t in lora_cfg.targets]


def adapted_linears(model_cfg, lora_cfg) -> list:
    """``[(in, out)]`` of every Linear that gets an adapter."""
    layers = model_cfg.num_layers + (1 if lora_cfg.top_query else 0)
    return layer_linears(model_cfg, lora_cfg) * layers


def adapter_parameters(model_cfg, lora_cfg) -> int:
    """Trainable parameters: ``sum(r · (in + out))`` over the adapted Linears."""
    return sum(lora_cfg.rank * (i + o) for i, o in adapted_linears(model_cfg, lora_cfg))


def base_bytes(model_cfg, base: str) -> int:
    """Bytes of the frozen base in ``float16`` or ``int8`` (W8A16, FP32 row scales)."""
    if base not in BASES:
        raise ValueError(f"base {base!r}: must be one of {', '.join(BASES)}")
    stored = dataclasses.replace(model_cfg, param_dtype="float16", weight_quant=base.replace("float16", "none"))
    return weight_bytes(stored)["total"]   # W8A16: int8 linear weights + FP32 row scales, the rest FP16


def lora_training_memory(cfg, base: str, recompute: bool, reserve_bytes: int) -> dict:
    """Per-device bytes of one LoRA training step of ``cfg`` on one device (see ``ASSUMPTIONS``)."""
    mdl, tr, lo = cfg.model, cfg.train, cfg.lora
    c = DTYPE_BYTES[mdl.compute_dtype]
    m = 1 if (mdl.dropout > 0 or lo.dropout > 0) else 0
    b, s, h, f, heads = tr.micro_batch_size, tr.seq_length, mdl.hidden_size, mdl.ffn_hidden_size, mdl.num_heads
    layers, sbh = mdl.num_layers + 1, tr.seq_length * tr.micro_batch_size * mdl.hidden_size
    n_a = adapter_parameters(mdl, lo)
    adapter_acts = sum((4 + m) * s * b * i + 4 * s * b * lo.rank for i, _ in layer_linears(mdl, lo))
    layer = layer_activation_bytes(b, s, h, heads, 1, c, m)["total"] + adapter_acts
    mem = {"base_weights": base_bytes(mdl, base),
           "adapter_weights": 4 * n_a,
           "adapter_gradients": 4 * n_a,
           "adam_moments": 8 * n_a}
    if tr.grad_accumulation > 1:
        mem["gradient_accumulation"] = 4 * n_a
    mem["activations_layers"] = layers * c * sbh + layer if recompute else layers * layer
    mem["dequantized_weights"] = 0
    if base == "int8":
        per_layer = (4 * h * h + 2 * h * f)
        mem["dequantized_weights"] = (4 + c) * h * f + (c * per_layer * (layers - 1) if not recompute else 0)
    mem["activations_other"] = (m + 3 * c) * sbh + (c + 4 * LOSS_FP32_TENSORS) * b * s * mdl.vocab_size
    mem["workspace"] = 2 * c * sbh + reserve_bytes
    mem["total"] = sum(mem.values())
    return mem


def lora_plan(cfg, capacity_gib: float = 32.0, reserve_gib: float = 2.0) -> dict:
    """LoRA memory on one device for FP16 and INT8 bases, with and without recompute, as a
    JSON-ready dict; ``fits`` is for the config's own base and recompute setting."""
    if cfg.lora.rank <= 0:
        raise ValueError("lora.rank is 0: this config trains the whole network; use plan's full report")
    if cfg.parallel.data_parallel * cfg.parallel.model_parallel * cfg.parallel.pipeline_stages != 1:
        raise ValueError("the LoRA plan models one device: set parallel.data_parallel, "
                         "model_parallel and pipeline_stages to 1")
    capacity, reserve = int(capacity_gib * GIB), int(reserve_gib * GIB)
    memory = {f"{base}_{'recompute' if rc else 'no_recompute'}":
              lora_training_memory(cfg, base, rc, reserve) for base in BASES for rc in (True, False)}
    base = "int8" if cfg.model.weight_quant == "int8" else "float16"
    chosen = f"{base}_{'recompute' if cfg.parallel.recompute else 'no_recompute'}"
    total = memory[chosen]["total"]
    return {"lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "targets": list(cfg.lora.targets),
                     "top_query": cfg.lora.top_query,
                     "adapted_linears": len(adapted_linears(cfg.model, cfg.lora)),
                     "adapter_parameters": adapter_parameters(cfg.model, cfg.lora)},
            "model_parameters": model_parameters(cfg.model),
            "micro_batch_size": cfg.train.micro_batch_size, "seq_length": cfg.train.seq_length,
            "compute_dtype": cfg.model.compute_dtype,
            "memory": memory, "chosen": chosen, "capacity": capacity,
            "fits": total <= capacity, "margin": capacity - total, "assumptions": ASSUMPTIONS}


_ROWS = [("base_weights", "frozen base weights"), ("adapter_weights", "adapters, FP32"),
         ("adapter_gradients", "adapter gradients, FP32"), ("adam_moments", "Adam m and v, FP32"),
         ("gradient_accumulation", "gradient accumulation buffer"),
         ("activations_layers", "activations, transformer layers"),
         ("dequantized_weights", "dequantized INT8 weights in flight"),
         ("activations_other", "activations, embeddings/head/loss"),
         ("workspace", "workspace (activation grads + reserve)"), ("total", "total")]


def format_lora_plan(plan, title: str = "") -> str:
    """The human-readable report of :func:`lora_plan`."""
    lo, mem = plan["lora"], plan["memory"]
    cols = ["float16_recompute", "float16_no_recompute", "int8_recompute", "int8_no_recompute"]
    out = [f"CodeGeeX LoRA fine-tuning plan, one device{': ' + title if title else ''}",
           f"base {plan['model_parameters']:,} parameters frozen; adapters rank {lo['rank']} "
           f"(alpha {lo['alpha']:g}) on {', '.join(lo['targets'])} of every layer"
           f"{' and the top-query layer' if lo['top_query'] else ''}: {lo['adapted_linears']} Linears, "
           f"{lo['adapter_parameters']:,} trainable parameters",
           f"micro-batch {plan['micro_batch_size']} × seq {plan['seq_length']}, compute "
           f"{plan['compute_dtype']}", "",
           f"{'memory per device (GiB)':40s}{'FP16 base':>22s}{'INT8 base':>22s}",
           f"{'':40s}{'recompute':>11s}{'none':>11s}{'recompute':>11s}{'none':>11s}"]
    for key, label in _ROWS:
        if any(key in mem[c] for c in cols):
            out.append(f"  {label:38s}" + "".join(f"{mem[c].get(key, 0) / GIB:11.2f}" for c in cols))
    verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
    chosen = mem[plan["chosen"]]
    base, recompute = plan["chosen"].split("_", 1)
    out += ["", f"config uses the {'INT8' if base == 'int8' else 'FP16'} base, "
            f"{recompute.replace('_', ' ')}: total {chosen['total'] / GIB:.2f} GiB of {plan['capacity'] / GIB:.0f} GiB -> {verdict}, "
            f"margin {plan['margin'] / GIB:.2f} GiB", "", "assumptions"]
    out += [f"  - {a}" for a in plan["assumptions"]]
    return "\n".join(out)
