"""Memory of CodeGeeX inference on one device, and the largest batch × length that fits.

``plan`` uses this for inference configs (``infer_*``, or ``--inference``). Parameter counts come
from the release layout of the config's sizes (``checkpoint.layout``), so nothing is built.
Units: bytes; GB = 1e9 bytes, GiB = 2**30 bytes.
"""

from codegeex_ms.checkpoint.layout import release_layout, sizes_of
from codegeex_ms.config import DTYPE_BYTES
from codegeex_ms.model.codegeex import HEAD_CHUNK_ROWS
from codegeex_ms.model.quant import is_quantized_weight

GIB = 1 << 30
SCALE_BYTES = 4            # FP32 per-row scales (codegeex_ms.model.quant)
SOFTMAX_BYTES = 4          # scores and probabilities are FP32
LOGITS_BYTES = 4           # FP32 logits
BATCHES = (1, 2, 4, 8, 16, 32, 64)
DEVICES = ("npu", "cpu")
RESERVE_GIB = {"npu": 2.0, "cpu": 0.4}
"""Default runtime reserve per device. CPU: the resident memory of a Python process with
MindSpore 2.9 imported and its CPU kernels loaded, measured 0.39 GiB (VmRSS before any weight is
touched, bench_13b_cpu); NPU: HCCL buffers and allocator fragmentation, an estimate."""

ASSUMPTIONS = [
    "Weights: with weight_quant int8 the six linear weights of every layer are int8 plus one FP32 "
    "scale per output row; everything else (and every weight without int8) in param_dtype. One copy "
    "(memory-mapped or loaded), every page touched by the first forward, no optimizer, no gradients.",
    "KV cache: keys and values of every layer (layers + top-query layer) in the compute dtype, "
    "2·L·b·T·h·c for the decode pool (batch × length), plus the prefill cache the generator keeps "
    "for the prompt's bucket (2·L·b·P·h·c, P = the power of two ≥ the longest prompt, at least 16, "
    "at most the length; longest prompt = length − max_new_tokens).",
    "Workspace, the worst forward (prefill of the longest prompt, s = P; PyNative frees each "
    "intermediate after its last use and the allocator keeps the high-water mark): one layer's live "
    "activations — 6 residual-stream tensors b·s·h·c (input, LayerNorm, q, k, v, context), the "
    "MLP's b·s·f·c twice (dense_h_to_4h and FastGELU outputs), the attention scores and "
    "probabilities 2·b·a·s·P·4 —; the tied head's table: nothing on --device cpu with an FP16 "
    "table, FP32 compute and fused kernels (the FP16-weight kernel reads the table itself), else "
    "widened in chunks of C = 2048 rows when the compute dtype is wider than param_dtype (a "
    "chunk's slice and its widened copy, C·h·(p+c)), "
    "cast whole when narrower (V·h·c), nothing when equal; FP32 logits of the last position only, "
    "b·V·4 twice (framework and host copy).",
    "Reserve: the runtime (framework libraries, Python, allocator slack), --reserve-gib; default "
    "0.4 GiB on --device cpu (measured), 2 GiB on npu. Graph mode on CPU is not modelled: it keeps "
    "every intermediate of a compiled forward alive (measured +0.13 GiB per 13B layer at a "
    "128-token prefill), so the CPU path runs PyNative.",
    "Decode reads per token: every weight once except the two position tables (one row each), plus "
    "the KV cache; ms/token at a bandwidth B is that ÷ B (the memory-bandwidth bound).",
]


def is_inference_config(config_name) -> bool:
    """Whether ``plan --config NAME`` plans inference: the file's name starts with ``infer``."""
    from pathlib import Path  # pylint: disable=import-outside-toplevel
    return bool(config_name) and Path(str(config_name)).name.startswith("infer")


def weight_bytes(mdl) -> dict:
    """Weight bytes of ``mdl`` (a ModelConfig) as stored for inference."""
    p = DTYPE_BYTES[mdl.param_dtype]
    out = {"linear": 0, "scales": 0, "other": 0, "positions": 0, "parameters": 0}
    for name, shape in release_layout(sizes_of(mdl)).items():
        n = 1
        for d in shape:
            n *= d
        out["parameters"] += n
        if is_quantized_weight(name) and mdl.weight_quant == "int8":
            out["linear"] += n
            out["scales"] += SCALE_BYTES * shape[0]
        elif is_quantized_weight(name):
            out["linear"] += p * n
        elif "position_embeddings" in name or "top_query_embeddings" in name:
            out["positions"] += p * n
        else:
            out["other"] += p * n
    out["total"] = out["linear"] + out["scales"] + out["other"] + out["positions"]
    return out


def kv_cache_bytes(mdl, batch: int, length: int) -> int:
    """Keys and values of every layer for ``batch`` × ``length`` positions."""
    return 2 * (mdl.num_layers + 1) * batch * length * mdl.hidden_size * DTYPE_BYTES[mdl.compute_dtype]


def prompt_bucket(length: int, max_new_tokens: int) -> int:
    """The prefill length of the longest prompt (``length − max_new_tokens``, at least 1): the
    power of two at least that, at least 16, at most ``length`` (``SlotKVCache.prefill_shape``)."""
    longest = max(length - max_new_tokens, 1)
    bucket = 16
    while bucket < longest:
        bucket *= 2
    return min(bucket, length)


def head_bytes(mdl, device: str = "npu") -> int:
    """Transient bytes of the tied head's table (see ``ASSUMPTIONS``)."""
    p, c = DTYPE_BYTES[mdl.param_dtype], DTYPE_BYTES[mdl.compute_dtype]
    if device == "cpu" and mdl.fused_kernels != "off" and (p, c) == (2, 4):
        return 0    # the FP16-weight kernel reads the table itself
    if c > p:
        return min(HEAD_CHUNK_ROWS, mdl.vocab_size) * mdl.hidden_size * (p + c)
    return mdl.vocab_size * mdl.hidden_size * c if c < p else 0


def workspace_bytes(mdl, batch: int, prompt: int, device: str = "npu") -> dict:
    """Transient bytes of the worst forward, a prefill of ``prompt`` tokens (see ``ASSUMPTIONS``)."""
    c = DTYPE_BYTES[mdl.compute_dtype]
    b, s, h, f, v = batch, prompt, mdl.hidden_size, mdl.ffn_hidden_size, mdl.vocab_size
    parts = {"head": head_bytes(mdl, device),
             "logits": 2 * b * v * LOGITS_BYTES,
             "layer": 6 * b * s * h * c + 2 * b * s * f * c + 2 * b * mdl.num_heads * s * s * SOFTMAX_BYTES}
    parts["total"] = sum(parts.values())
    return parts


def inference_total(mdl, batch: int, length: int, reserve: int, max_new_tokens: int = 1,
                    device: str = "npu") -> int:
    """Peak bytes of inference at ``batch`` × ``length`` with prompts up to
    ``length − max_new_tokens`` tokens."""
    prompt = prompt_bucket(length, max_new_tokens)
    return (weight_bytes(mdl)["total"] + kv_cache_bytes(mdl, batch, length) + kv_cache_bytes(mdl, batch, prompt)
            + workspace_bytes(mdl, batch, prompt, device)["total"] + reserve)


def largest_length(mdl, batch: int, capacity: int, reserve: int, max_new_tokens: int = 1,
                   device: str = "npu") -> int:
    """The longest prompt + generation (≤ the model's positions) that fits at ``batch``; 0 if none."""
    lo, hi = 0, mdl.max_position_embeddings
    while lo < hi:   # total grows with length: bisect
        mid = (lo + hi + 1) // 2
        if inference_total(mdl, batch, mid, reserve, max_new_tokens, device) <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def build_inference_plan(cfg, capacity_gib: float = 32.0, reserve_gib: float = None,
                         device: str = "npu") -> dict:
    """Everything ``plan`` reports for an inference config, as a JSON-ready dict. ``reserve_gib``
    defaults to ``RESERVE_GIB[device]``."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r}: choose one of {', '.join(DEVICES)}")
    mdl, inf = cfg.model, cfg.inference
    reserve_gib = RESERVE_GIB[device] if reserve_gib is None else reserve_gib
    capacity, reserve = int(capacity_gib * GIB), int(reserve_gib * GIB)
    batch, length = inf.batch_size, inf.max_length or mdl.max_position_embeddings
    new = min(inf.max_new_tokens, length - 1)
    prompt = prompt_bucket(length, new)
    weights = weight_bytes(mdl)
    kv = kv_cache_bytes(mdl, batch, length)
    prefill_kv = kv_cache_bytes(mdl, batch, prompt)
    work = workspace_bytes(mdl, batch, prompt, device)
    total = weights["total"] + kv + prefill_kv + work["total"] + reserve
    largest = {b: largest_length(mdl, b, capacity, reserve, new, device) for b in BATCHES}
    full = [b for b, n in largest.items() if n >= length]
    return {
        "mode": "inference", "device": device,
        "model": {"parameters": weights["parameters"], "param_dtype": mdl.param_dtype,
                  "compute_dtype": mdl.compute_dtype, "weight_quant": mdl.weight_quant},
        "batch_size": batch, "max_length": length, "max_new_tokens": new, "prompt_bucket": prompt,
        "weights": weights, "kv_cache": kv, "prefill_cache": prefill_kv, "workspace": work,
        "reserve": reserve, "peak_bytes": total, "capacity": capacity, "fits": total <= capacity,
        "margin": capacity - total,
        "largest_length_per_batch": largest,
        "largest_batch_at_length": max(full) if full else 0,
        "step_bytes": weights["total"] - weights["positions"] + kv,
        "assumptions": ASSUMPTIONS,
    }


def format_inference_plan(plan, title: str = "") -> str:
    """The human-readable report of :func:`build_inference_plan`."""
    m, w = plan["model"], plan["weights"]
    quant = "INT8 W8A16 linears" if m["weight_quant"] == "int8" else f"{m['param_dtype']} weights"
    gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
    out = [f"CodeGeeX inference plan{': ' + title if title else ''}",
           f"one device; {m['parameters']:,} parameters, {quant}, {m['param_dtype']} other weights, "
           f"{m['compute_dtype']} compute; batch {plan['batch_size']} × length {plan['max_length']} "
           f"(prompts up to {plan['max_length'] - plan['max_new_tokens']} tokens, prefill bucket "
           f"{plan['prompt_bucket']}); device {plan['device']}",
           "",
           "memory",
           f"  weights, linear layers                  {gib(w['linear'])}",
           f"  weights, INT8 row scales                {gib(w['scales'])}",
           f"  weights, embeddings/LayerNorms/biases   {gib(w['other'] + w['positions'])}",
           f"  KV cache (decode pool)                  {gib(plan['kv_cache'])}",
           f"  KV cache (prefill)                      {gib(plan['prefill_cache'])}",
           f"  workspace (head, logits, 1 layer)       {gib(plan['workspace']['total'])}",
           f"  reserve (runtime)                       {gib(plan['reserve'])}",
           f"  total                                   {gib(plan['peak_bytes'])}",
           "",
           f"total {plan['peak_bytes'] / GIB:.2f} GiB of {plan['capacity'] / GIB:.0f} GiB -> "
           f"{'FITS' if plan['fits'] else 'DOES NOT FIT'}, margin {plan['margin'] / GIB:.2f} GiB",
           f"largest batch at length {plan['max_length']}: {plan['largest_batch_at_length']}",
           "largest length per batch (prompt + new tokens, at most the model's positions):",
           "  " + ", ".join(f"batch {b}: {n}" for b, n in plan["largest_length_per_batch"].items()),
           f"decode reads {plan['step_bytes'] / 1e9:.2f} GB per step: ms/token ≥ that ÷ memory bandwidth "
           f"(e.g. {plan['step_bytes'] / 1e9 / 10 * 1e3:.0f} ms at 10 GB/s)",
           "", "assumptions"] + [f"  - {a}" for a in plan["assumptions"]]
    return "\n".join(out)
