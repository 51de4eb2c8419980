"""Per-device memory and model FLOPs of a parallel training config, and inference weight sizes.

Parameter counts per device come from the network under the config's shard plan; the
parallel-optimizer group follows MindSpore's rule (``parallel.strategy_file``). Every modelling
assumption is in ``ASSUMPTIONS``, printed by ``python -m codegeex_ms.plan``. Units: bytes; GB = 1e9
bytes, GiB = 2**30 bytes.
"""

from dataclasses import replace

from codegeex_ms.budget.inference import GIB, SOFTMAX_BYTES, kv_cache_bytes, weight_bytes
from codegeex_ms.checkpoint.layout import WORD_EMBEDDINGS
from codegeex_ms.config import DTYPE_BYTES, ConfigError, global_batch_size
from codegeex_ms.model.quant import is_quantized_weight
from codegeex_ms.parallel.communication import format_communication, plan_communication
from codegeex_ms.parallel.strategy_file import (WHOLE_GROUP, optimizer_shard_size_for,
                                                plan_layouts, planned_parameters)

LOSS_FP32_TENSORS = 3      # cross-entropy keeps shifted logits, exp and one-hot, [tokens, V/mp] FP32
PAPER_13B = {"parameters": 12_873_943_040, "fp16_gb": 27, "int8_gb": 15}

ASSUMPTIONS = [
    "Notation: b micro-batch per data-parallel rank, s sequence, h hidden, a heads, L = layers + "
    "top-query layer, V vocabulary rows, t = mp, P parameters per device (its model-parallel "
    "slice), P_o = its parallel-optimizer shard, c/p = bytes of the compute/parameter dtype.",
    "Weights: a compute-dtype copy of the whole slice, c·P, is resident for the step (the matmul "
    "operand, all-gathered from the optimizer shards); the parameter itself (FP32 master when "
    "param_dtype is float32) is p·P_o. With no sharding and c = p the parameter is the copy.",
    "Optimizer: Adam first and second moments in FP32, 8·P_o.",
    "Gradients (ZeRO-2 style when optimizer_shard): the reduced shard p·P_o plus one gradient-fusion "
    "bucket in flight, p·P/groups; without optimizer_shard the whole slice p·P is all-reduced in place.",
    "Activations per layer (Korthikanti et al. 2022, tensor parallel, no sequence parallel): "
    "s·b·h·(4c + 2m) replicated (two LayerNorm inputs, the q/k/v and MLP inputs, m = 1-byte dropout "
    "masks of the two residual branches) + 12c·s·b·h/t split (q, k, v, context, FFN input and "
    "FastGELU output) + (f + m + c)·a·s²·b/t for attention (f = 4: the softmax output saved in FP32, "
    "its dropout mask, the dropped probabilities). With c = 2, f = 2, m = 1 this is the paper's "
    "s·b·h·(10 + 24/t + 5·a·s/(h·t)).",
    "Recompute (every layer): each layer keeps only its input, c·s·b·h, and one layer's full "
    "activations are live again while its backward runs.",
    "Outside the layers: embedding dropout mask m·s·b·h, top-query embedding, final-LayerNorm input "
    "and head input c·s·b·h each, and at the loss the compute-dtype logits plus three FP32 tensors "
    "(shifted logits, exp, one-hot): (c + 12)·b·s·V/t.",
    "Workspace: two activation-gradient buffers of the residual stream, 2c·s·b·h, plus a fixed "
    "reserve for the runtime, HCCL buffers and allocator fragmentation (--reserve-gib).",
    "Model FLOPs per token (Narayanan et al. 2021): 6·N_mm + 12·L·s·h, N_mm = the six linear "
    "weights of every layer plus the tied head V·h; the attention term counts the full s×s scores "
    "and context products, without the causal saving. Recompute adds one forward of the layers: "
    "hardware FLOPs = model FLOPs + 2·N_layers + 4·L·s·h.",
    "Inference (whole model on one device): FP16 weights; INT8 W8A16 stores the six linear weights "
    "of every layer as int8 with one scale per output row; embeddings, LayerNorms and biases stay "
    "FP16; KV cache 2·L·batch·length·h FP16 values.",
]


def _slice(param) -> int:
    n = param.numel
    for s in param.splits:
        n //= s
    return n


def parameter_counts(params, layouts) -> dict:
    """Totals over the network: all parameters, per device, per device after optimizer sharding,
    matmul weights (linear + tied head), linear weights only and their output rows."""
    linear = {n: p for n, p in params.items() if is_quantized_weight(n)}
    return {
        "total": sum(p.numel for p in params.values()),
        "per_device": sum(_slice(p) for p in params.values()),
        "per_device_optimizer": sum(_slice(p) // max(layouts[n].opt_shard_size, 1)
                                    for n, p in params.items()),
        "optimizer_sharded_tensors": sum(1 for lay in layouts.values() if lay.opt_shard_size > 1),
        "tensors": len(params),
        "linear": sum(p.numel for p in linear.values()),
        "linear_rows": sum(p.shape[0] for p in linear.values()),
        "matmul": sum(p.numel for p in linear.values()) + params[WORD_EMBEDDINGS].numel,
    }


def layer_activation_bytes(b, s, h, heads, t, c, dropout, softmax_bytes=SOFTMAX_BYTES) -> dict:
    """Activation bytes one layer saves for backward on one device (see ``ASSUMPTIONS``)."""
    m = 1 if dropout > 0 else 0
    sbh = s * b * h
    parts = {"replicated": (4 * c + 2 * m) * sbh,
             "tensor_parallel": 12 * c * sbh // t,
             "attention": (softmax_bytes + m + c) * heads * s * s * b // t}
    parts["total"] = sum(parts.values())
    return parts


def training_memory(cfg, counts, recompute: bool, reserve_bytes: int) -> dict:
    """Per-device bytes of one training step for ``cfg`` (see ``ASSUMPTIONS``)."""
    mdl, par, tr = cfg.model, cfg.parallel, cfg.train
    c, p = DTYPE_BYTES[mdl.compute_dtype], DTYPE_BYTES[mdl.param_dtype]
    n_dev, n_opt = counts["per_device"], counts["per_device_optimizer"]
    b, s, h, t = tr.micro_batch_size, tr.seq_length, mdl.hidden_size, par.model_parallel
    layers = mdl.num_layers + 1
    vocab_split = t if par.vocab_parallel else 1
    m = 1 if mdl.dropout > 0 else 0
    sbh = s * b * h
    sharded = counts["optimizer_sharded_tensors"] > 0
    mem = {
        "weights_compute": c * n_dev if (c != p or sharded) else 0,
        "weights_param": p * n_opt,
        "adam_moments": 8 * n_opt,
        "gradients": p * n_opt + p * n_dev // par.gradient_fusion_groups if sharded else p * n_dev,
    }
    if tr.grad_accumulation > 1:
        mem["gradient_accumulation"] = p * n_opt
    layer = layer_activation_bytes(b, s, h, mdl.num_heads, t, c, mdl.dropout)["total"]
    mem["activations_layers"] = layers * c * sbh + layer if recompute else layers * layer
    mem["activations_other"] = (m + 3 * c) * sbh + (c + 4 * LOSS_FP32_TENSORS) * b * s * mdl.vocab_size // vocab_split
    mem["workspace"] = 2 * c * sbh + reserve_bytes
    mem["total"] = sum(mem.values())
    return mem


def flops_per_token(model, seq_length: int) -> float:
    """Model FLOPs of one trained token (forward + backward = 3 × forward; recompute not counted).

    Forward per token and layer (decoder layers + the top-query layer): q/k/v/out projections
    ``8h²``, MLP ``4hf``, attention scores and context ``4sh`` (the model computes the full S×S
    block); plus the tied head ``2hV``. A multiply-add counts as 2 FLOPs.
    """
    h, f, s = model.hidden_size, model.ffn_hidden_size, seq_length
    layer = 8 * h * h + 4 * h * f + 4 * s * h
    return 3.0 * ((model.num_layers + 1) * layer + 2 * h * model.vocab_size)


def model_flops(cfg, counts) -> dict:
    """FLOPs per token and per step (see ``ASSUMPTIONS``)."""
    mdl, par = cfg.model, cfg.parallel
    layers, s, h = mdl.num_layers + 1, cfg.train.seq_length, mdl.hidden_size
    per_token = int(flops_per_token(mdl, s))
    tokens = global_batch_size(cfg) * s
    return {"per_token": per_token,
            "per_token_6n": 6 * counts["total"],
            "per_token_hardware_recompute": per_token + 2 * counts["linear"] + 4 * layers * s * h,
            "tokens_per_step": tokens,
            "per_step": per_token * tokens,
            "per_device_per_step": per_token * tokens // (par.data_parallel * par.model_parallel)}


def inference_memory(cfg) -> dict:
    """Whole-model weight bytes in FP16 and INT8 W8A16, and the FP16 KV cache (``budget.inference``)."""
    inf, fp16 = cfg.inference, replace(cfg.model, param_dtype="float16", compute_dtype="float16", weight_quant="none")
    int8 = weight_bytes(replace(fp16, weight_quant="int8"))
    length = inf.max_length or fp16.max_position_embeddings
    return {"weights_fp16": weight_bytes(fp16)["total"],
            "weights_int8_fp16_scales": int8["total"] - int8["scales"] // 2,
            "weights_int8_fp32_scales": int8["total"],
            "kv_cache_fp16": kv_cache_bytes(fp16, inf.batch_size, length),
            "batch_size": inf.batch_size, "max_length": length}


def _default_group(cfg, params, reserve: int) -> dict:
    """What MindSpore's default parallel-optimizer group (all replicas of a slice) would shard."""
    par = cfg.parallel
    layouts = plan_layouts(params, par.data_parallel, par.model_parallel,
                           WHOLE_GROUP if par.optimizer_shard else 0)
    counts = parameter_counts(params, layouts)
    return {"sharded_tensors": counts["optimizer_sharded_tensors"],
            "per_device_optimizer": counts["per_device_optimizer"],
            "total": training_memory(cfg, counts, par.recompute, reserve)["total"]}


def build_plan(cfg, capacity_gib: float = 32.0, reserve_gib: float = 2.0) -> dict:
    """Everything ``plan`` reports, as a JSON-ready dict."""
    if cfg.parallel.pipeline_stages != 1:
        raise ConfigError("parallel.pipeline_stages: the plan models pipeline_stages = 1 only "
                          "(CodeGeeX trained without pipeline parallelism)")
    params = planned_parameters(cfg.model, cfg.parallel)
    opt_size = optimizer_shard_size_for(params, cfg.parallel)
    layouts = plan_layouts(params, cfg.parallel.data_parallel, cfg.parallel.model_parallel, opt_size)
    counts = parameter_counts(params, layouts)
    capacity, reserve = int(capacity_gib * GIB), int(reserve_gib * GIB)
    memory = {name: training_memory(cfg, counts, on, reserve)
              for name, on in (("recompute", True), ("no_recompute", False))}
    chosen = "recompute" if cfg.parallel.recompute else "no_recompute"
    tr, mdl = cfg.train, cfg.model
    layer = layer_activation_bytes(tr.micro_batch_size, tr.seq_length, mdl.hidden_size,
                                   mdl.num_heads, cfg.parallel.model_parallel,
                                   DTYPE_BYTES[mdl.compute_dtype], mdl.dropout)
    total = memory[chosen]["total"]
    activations = memory[chosen]["activations_layers"] + memory[chosen]["activations_other"]
    per_sequence = (activations + memory[chosen]["workspace"] - reserve) // tr.micro_batch_size
    return {
        "parallel": {"data_parallel": cfg.parallel.data_parallel,
                     "model_parallel": cfg.parallel.model_parallel,
                     "devices": cfg.parallel.data_parallel * cfg.parallel.model_parallel,
                     "vocab_parallel": cfg.parallel.vocab_parallel,
                     "optimizer_shard": cfg.parallel.optimizer_shard,
                     "optimizer_shard_size": opt_size,
                     "recompute": cfg.parallel.recompute,
                     "micro_batch_size": tr.micro_batch_size, "seq_length": tr.seq_length,
                     "global_batch_size": global_batch_size(cfg),
                     "compute_dtype": mdl.compute_dtype, "param_dtype": mdl.param_dtype},
        "parameters": counts,
        "activation_per_layer": layer,
        "memory": memory,
        "chosen": chosen,
        "capacity": capacity,
        "fits": total <= capacity,
        "margin": capacity - total,
        "activation_bytes_per_sequence": per_sequence,
        "mindspore_default_group": _default_group(cfg, params, reserve),
        "flops": model_flops(cfg, counts),
        "inference": inference_memory(cfg),
        "communication": plan_communication(cfg, {n: lay.opt_shard_size for n, lay in layouts.items()}),
        "assumptions": ASSUMPTIONS,
    }


# ---------------------------------------------------------------------------------------------
# Report


def _gib(n) -> str:
    return f"{n / GIB:8.2f} GiB"


def _memory_rows(plan) -> list:
    par = plan["parallel"]
    g = par["optimizer_shard_size"]
    shard = f"/{g}" if g > 1 else "unsharded"
    c, p = par["compute_dtype"].replace("float", "FP"), par["param_dtype"].replace("float", "FP")
    rows = [("weights_compute", f"weights, {c} compute copy"),
            ("weights_param", f"weights, {p} parameters ({shard})"),
            ("adam_moments", f"Adam m and v, FP32 ({shard})"),
            ("gradients", f"gradients, {p}" + (" (shard + 1 fusion bucket)" if g > 1 else ""))]
    if "gradient_accumulation" in plan["memory"]["recompute"]:
        rows.append(("gradient_accumulation", "gradient accumulation buffer"))
    rows += [("activations_layers", "activations, transformer layers"),
             ("activations_other", "activations, embeddings/head/loss"),
             ("workspace", "workspace (activation grads + reserve)"),
             ("total", "total")]
    return rows


def format_plan(plan, title: str = "") -> str:
    """The human-readable report of :func:`build_plan`."""
    par, counts, mem, fl, inf = (plan["parallel"], plan["parameters"], plan["memory"],
                                 plan["flops"], plan["inference"])
    out = [f"CodeGeeX parallel plan{': ' + title if title else ''}",
           f"devices {par['devices']} = dp {par['data_parallel']} × mp {par['model_parallel']}"
           f" (vocab parallel: {par['vocab_parallel']}); micro-batch {par['micro_batch_size']} × "
           f"seq {par['seq_length']}; global batch {par['global_batch_size']} sequences = "
           f"{fl['tokens_per_step']:,} tokens/step",
           f"parameters {counts['total']:,} total; {counts['per_device']:,} per device "
           f"(model-parallel slice); optimizer shard group {par['optimizer_shard_size'] or 'off'}: "
           f"{counts['per_device_optimizer']:,} per device, {counts['optimizer_sharded_tensors']}/"
           f"{counts['tensors']} tensors sharded",
           "",
           f"{'memory per device':44s}{'recompute':>13s}{'no recompute':>17s}"]
    for key, label in _memory_rows(plan):
        out.append(f"  {label:42s}{_gib(mem['recompute'][key])}    {_gib(mem['no_recompute'][key])}")
    chosen = mem[plan["chosen"]]
    layer = plan["activation_per_layer"]
    verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
    out += [f"  per layer: {layer['total'] / GIB:.2f} GiB full (replicated {layer['replicated'] / GIB:.2f}"
            f" + split {layer['tensor_parallel'] / GIB:.2f} + attention {layer['attention'] / GIB:.2f})",
            "",
            f"config uses {'recompute' if par['recompute'] else 'no recompute'}: total "
            f"{chosen['total'] / GIB:.2f} GiB of {plan['capacity'] / GIB:.0f} GiB -> {verdict}, "
            f"margin {plan['margin'] / GIB:.2f} GiB ({100 * plan['margin'] / plan['capacity']:.1f} %)"]
    out.append(_explain_margin(plan))
    out += ["",
            "model FLOPs (6·N_mm + 12·L·s·h per token)",
            f"  per token {fl['per_token'] / 1e9:.2f} GFLOP (6·N alone: {fl['per_token_6n'] / 1e9:.2f}); "
            f"with recompute the hardware does {fl['per_token_hardware_recompute'] / 1e9:.2f} GFLOP",
            f"  per step {fl['per_step']:.4e} FLOP; per device per step {fl['per_device_per_step']:.4e} FLOP",
            "",
            "inference weights, whole model on one device",
            f"  FP16: {inf['weights_fp16'] / 1e9:.2f} GB ({inf['weights_fp16'] / GIB:.2f} GiB)",
            f"  INT8 W8A16 (FP16 row scales): {inf['weights_int8_fp16_scales'] / 1e9:.2f} GB "
            f"({inf['weights_int8_fp16_scales'] / GIB:.2f} GiB); FP32 scales add "
            f"{(inf['weights_int8_fp32_scales'] - inf['weights_int8_fp16_scales']) / 1e6:.1f} MB",
            f"  KV cache FP16, batch {inf['batch_size']} × {inf['max_length']} tokens: "
            f"{inf['kv_cache_fp16'] / 1e9:.2f} GB",
            f"  weights + KV cache: FP16 {(inf['weights_fp16'] + inf['kv_cache_fp16']) / 1e9:.2f} GB, "
            f"INT8 {(inf['weights_int8_fp16_scales'] + inf['kv_cache_fp16']) / 1e9:.2f} GB"]
    if counts["total"] == PAPER_13B["parameters"]:
        out.append(f"  paper (13B): ≈{PAPER_13B['fp16_gb']} GB in FP16, ≈{PAPER_13B['int8_gb']} GB in "
                   "INT8 — the device memory of inference, which the weights plus a full 2048-token "
                   "KV cache match")
    out += [""] + format_communication(plan["communication"])
    out += ["", "assumptions"] + [f"  - {a}" for a in plan["assumptions"]]
    return "\n".join(out)


def _explain_margin(plan) -> str:
    mem, par = plan["memory"], plan["parallel"]
    per_seq = plan["activation_bytes_per_sequence"]
    chosen = mem[plan["chosen"]]
    acts = chosen["activations_layers"] + chosen["activations_other"]
    states = chosen["total"] - acts - chosen["workspace"]
    lines = [f"  activations are {100 * acts / chosen['total']:.0f} % of the total, model and optimizer "
             f"states {100 * states / chosen['total']:.0f} %; one more sequence per micro-batch costs "
             f"{per_seq / GIB:.2f} GiB"]
    if plan["fits"]:
        lines.append(f"  the margin holds {plan['margin'] // per_seq} more sequences per micro-batch "
                     f"(micro-batch {par['micro_batch_size']} -> at most "
                     f"{par['micro_batch_size'] + plan['margin'] // per_seq})")
    default = plan["mindspore_default_group"]
    if par["optimizer_shard"] and default["sharded_tensors"] < plan["parameters"]["tensors"]:
        lines.append(f"  the group is {par['optimizer_shard_size']} (set MindSpore's "
                     f"optimizer_weight_shard_size to it): the default group, all replicas, would "
                     f"split only {default['sharded_tensors']}/{plan['parameters']['tensors']} tensors "
                     f"(dimension 0 must divide by split × group) and need {default['total'] / GIB:.2f} GiB")
    if par["recompute"]:
        lines.append(f"  without recompute the layers' activations alone are "
                     f"{mem['no_recompute']['activations_layers'] / GIB:.1f} GiB: recompute is required")
    return "\n".join(lines)
