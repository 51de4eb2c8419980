"""`python -m codegeex_ms.plan`: numbers checked against arithmetic written out here by hand."""

import json

import pytest

from codegeex_ms import plan as plan_cli
from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.budget.training import build_plan, format_plan, layer_activation_bytes

GIB = 2 ** 30
# CodeGeeX-13B (reference section 1) and the 1536-NPU recipe (section 5).
H, F, V, POS, L = 5120, 20480, 52224, 2048, 40          # L = 39 layers + top-query layer
HEADS, DP, MP, B, S = 40, 192, 8, 16, 2048
SBH = S * B * H


@pytest.fixture(scope="module")
def plan_1536():
    return build_plan(load_config(str(CONFIG_DIR / "pretrain_13b_1536npu.yaml")))


def test_parameter_counts_per_device(plan_1536):
    counts = plan_1536["parameters"]
    split_per_layer = 4 * H * H + 3 * H + 2 * H * F + F        # q,k,v,dense W; q,k,v b; W1, W2; b1
    replicated_per_layer = 2 * H + 4 * H                       # dense and W2 biases; 2 LayerNorms
    split = L * split_per_layer + V * H                        # + vocabulary-parallel word embedding
    replicated = L * replicated_per_layer + 2 * POS * H + 2 * H  # + position tables, final LN
    assert counts["total"] == split + replicated == 12_873_943_040
    assert counts["per_device"] == split // MP + replicated == 1_628_677_120
    # Group 64 (see test_distributed_ckpt: largest divisor of 192 sharding every tensor).
    assert plan_1536["parallel"]["optimizer_shard_size"] == 64
    assert counts["per_device_optimizer"] == 1_628_677_120 // 64
    assert counts["matmul"] == L * (4 * H * H + 2 * H * F) + V * H


def test_1536_npu_memory_by_hand_and_fits_32gb(plan_1536):
    p_dev, p_opt = 1_628_677_120, 1_628_677_120 // 64
    mem = plan_1536["memory"]["recompute"]
    assert mem["weights_compute"] == 2 * p_dev                 # FP16 copy of the mp slice
    assert mem["weights_param"] == 4 * p_opt                   # FP32 master, 1/64
    assert mem["adam_moments"] == 8 * p_opt                    # FP32 m and v, 1/64
    assert mem["gradients"] == 4 * p_opt + 4 * p_dev // 4      # FP32 shard + one of 4 fusion buckets
    # One layer: (4·2 + 2·1)·sbh + 12·2·sbh/8 + (4 + 1 + 2)·a·s²·b/8 = 13·sbh + 7·40·2048²·16/8
    layer = 13 * SBH + 7 * HEADS * S * S * B // MP
    assert layer == 4_529_848_320
    assert mem["activations_layers"] == L * 2 * SBH + layer    # layer inputs + one recomputed layer
    assert plan_1536["memory"]["no_recompute"]["activations_layers"] == L * layer
    logits = B * S * V // MP
    assert mem["activations_other"] == (1 + 3 * 2) * SBH + (2 + 3 * 4) * logits
    assert mem["workspace"] == 2 * 2 * SBH + 2 * GIB
    total = (2 * p_dev + 12 * p_opt + 4 * p_opt + p_dev + L * 2 * SBH + layer
             + 7 * SBH + 14 * logits + 4 * SBH + 2 * GIB)
    assert mem["total"] == total == 30_232_532_224             # 28.16 GiB
    assert plan_1536["fits"] and plan_1536["capacity"] == 32 * GIB
    assert plan_1536["margin"] == 32 * GIB - total
    assert not plan_1536["memory"]["no_recompute"]["total"] <= 32 * GIB
    # MindSpore's default group shards only the word embedding: 12 bytes/param of states return.
    assert plan_1536["mindspore_default_group"]["total"] > 32 * GIB


def test_korthikanti_formula_when_softmax_saved_in_fp16():
    # The paper: s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes, FP16 activations with 1-byte dropout masks.
    got = layer_activation_bytes(B, S, H, HEADS, MP, c=2, dropout=0.1, softmax_bytes=2)["total"]
    assert got == SBH * (10 + 24 // MP) + SBH * 5 * HEADS * S // (H * MP)
    no_dropout = layer_activation_bytes(B, S, H, HEADS, 1, c=2, dropout=0.0, softmax_bytes=2)["total"]
    assert no_dropout == SBH * (8 + 24) + 4 * HEADS * S * S * B


def test_flops_by_hand(plan_1536):
    flops = plan_1536["flops"]
    per_token = 6 * (L * (4 * H * H + 2 * H * F) + V * H) + 12 * L * S * H
    assert flops["per_token"] == per_token == 82_134_958_080
    assert flops["per_token_6n"] == 6 * 12_873_943_040
    assert flops["tokens_per_step"] == 3072 * 2048
    assert flops["per_step"] == per_token * 3072 * 2048
    assert flops["per_device_per_step"] == per_token * 3072 * 2048 // 1536
    assert flops["per_token_hardware_recompute"] == per_token + 2 * L * (4 * H * H + 2 * H * F) + 4 * L * S * H


def test_inference_fp16_and_int8_weights(plan_1536):
    inf = plan_1536["inference"]
    n = 12_873_943_040
    linear = L * (4 * H * H + 2 * H * F)                       # six weights per layer, int8
    rows = L * (4 * H + F + H)                                 # one scale per output row
    assert inf["weights_fp16"] == 2 * n == 25_747_886_080
    assert inf["weights_int8_fp16_scales"] == linear + 2 * rows + 2 * (n - linear)
    assert inf["weights_int8_fp32_scales"] == linear + 4 * rows + 2 * (n - linear)
    assert inf["kv_cache_fp16"] == 2 * L * 1 * 2048 * H * 2
    # The paper's ≈27 GB (FP16) and ≈15 GB (INT8) are inference device memory: weights + a full
    # 2048-token cache land within 0.5 GB of both; the FP16 weights alone are within 5 % of 27 GB.
    assert abs(inf["weights_fp16"] + inf["kv_cache_fp16"] - 27e9) < 0.5e9
    assert abs(inf["weights_int8_fp16_scales"] + inf["kv_cache_fp16"] - 15e9) < 0.5e9
    assert abs(inf["weights_fp16"] - 27e9) / 27e9 < 0.05


def test_unsharded_fp32_compute_plan():
    """dp 2 × mp 2 of the tiny model, FP32, no optimizer sharding, no vocabulary split."""
    cfg = load_config(str(CONFIG_DIR / "tiny_fixture.yaml"),
                      ("parallel.data_parallel=2", "parallel.model_parallel=2",
                       "parallel.vocab_parallel=false", "train.micro_batch_size=3",
                       "train.seq_length=32"))
    plan = build_plan(cfg, reserve_gib=0)
    h, f, v, pos, layers, t, b, s = 64, 256, 1024, 64, 3, 2, 3, 32
    split = layers * (4 * h * h + 3 * h + 2 * h * f + f)
    replicated = layers * 6 * h + v * h + 2 * pos * h + 2 * h
    p_dev = split // t + replicated
    assert plan["parameters"]["per_device"] == p_dev
    mem = plan["memory"]["no_recompute"]
    assert plan["parallel"]["optimizer_shard_size"] == 0
    assert mem["weights_compute"] == 0 and mem["weights_param"] == 4 * p_dev   # FP32 is the copy
    assert mem["adam_moments"] == 8 * p_dev and mem["gradients"] == 4 * p_dev
    sbh = s * b * h
    layer = 4 * 4 * sbh + 12 * 4 * sbh // t + (4 + 0 + 4) * 4 * s * s * b // t  # FP32, no dropout
    assert mem["activations_layers"] == layers * layer
    assert mem["activations_other"] == 3 * 4 * sbh + (4 + 12) * b * s * v     # vocab not split
    assert mem["workspace"] == 2 * 4 * sbh


def test_cli_prints_fit_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan_cli.main(["--config", "pretrain_13b_1536npu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "total 28.16 GiB of 32 GiB -> FITS, margin 3.84 GiB" in text
    assert "FP16: 25.75 GB" in text and "paper (13B): ≈27 GB" in text
    assert "Korthikanti" in text
    data = json.loads(out.read_text())
    assert data["fits"] is True and data["parameters"]["per_device"] == 1_628_677_120


def test_cli_rejects_bad_config(capsys):
    assert plan_cli.main(["--config", "pretrain_13b_1536npu", "--set", "parallel.model_parallel=3"]) == 2
    assert "parallel.model_parallel" in capsys.readouterr().err


def test_1536_npu_communication_per_step_by_hand(plan_1536):
    """The shard plan validates with no problem and its collectives per step match the layer count."""
    comm = plan_1536["communication"]
    assert comm["problems"] == []
    rows = {(r["phase"], r["kind"], r["group"]): (r["count"], r["bytes"]) for r in comm["rows"]}
    ring8 = lambda n: 2 * 7 * n // 8          # AllReduce over the 8 model-parallel devices
    act = B * S * H * 2                         # one FP16 [b·s, h] slice
    # Forward: 2 row-parallel outputs per layer, the word-embedding lookup (FP32 table rows), and
    # the loss's max, sum of exp and picked logit ([b·s, 1] FP32).
    assert rows[("forward", "AllReduce", MP)] == (2 * L + 1 + 3, 2 * L * ring8(act) + ring8(B * S * H * 4)
                                                  + 3 * ring8(B * S * 4))
    assert rows[("recompute", "AllReduce", MP)] == (2 * L, 2 * L * ring8(act))
    # Backward: input gradients of q, k, v and dense_h_to_4h in every layer, and of the head.
    assert rows[("backward", "AllReduce", MP)] == (4 * L + 1, (4 * L + 1) * ring8(act))
    # Every tensor is optimizer-sharded in groups of 64: reduce-scatter its FP32 gradient slice.
    assert rows[("gradients", "ReduceScatter", 64)][0] == 3 + 40 * 16 + 2
    assert "communication per step and device" in format_plan(plan_1536)


# ---------------------------------------------------------------------------- inference configs


def _inference_cfg(name):
    return load_config(CONFIG_DIR / f"{name}.yaml")


def test_inference_config_prints_an_inference_plan_that_fits(tmp_path, capsys):
    out_json = tmp_path / "infer.json"
    assert plan_cli.main(["--config", "infer_13b_single_npu", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "CodeGeeX inference plan" in text and "Adam" not in text
    assert "-> FITS" in text and "largest batch at length 2048: 1" in text
    plan = json.loads(out_json.read_text())
    assert plan["fits"] and plan["largest_length_per_batch"]["1"] == 2048
    # training configs keep the training plan
    assert plan_cli.main(["--config", "tiny"]) == 0
    assert "CodeGeeX parallel plan" in capsys.readouterr().out


def test_inference_weights_kv_cache_by_hand():
    """FP16 13B: 2 bytes x 12,873,943,040. INT8: the quantizer's own tensor plan over the release
    layout (int8 linears + FP32 row scales + FP16 rest), summed independently. KV cache by hand."""
    from codegeex_ms.checkpoint.base import TensorInfo
    from codegeex_ms.checkpoint.layout import CODEGEEX_13B, release_layout
    from codegeex_ms.model.quant import quantized_infos
    from codegeex_ms.budget.inference import build_inference_plan
    fp16 = build_inference_plan(_inference_cfg("infer_13b_single_npu"))
    assert fp16["weights"]["total"] == 2 * 12_873_943_040
    assert fp16["kv_cache"] == 2 * 40 * 1 * 2048 * 5120 * 2           # FP16 compute
    int8 = build_inference_plan(_inference_cfg("infer_13b_cpu_int8"), capacity_gib=24)
    infos = quantized_infos({n: TensorInfo(s, "float16") for n, s in release_layout(CODEGEEX_13B).items()})
    sizes = {"int8": 1, "float16": 2, "float32": 4}
    assert int8["weights"]["total"] == sum(i.numel * sizes[i.dtype] for i in infos.values())
    assert int8["kv_cache"] == 2 * 40 * 1 * 160 * 5120 * 4            # FP32 compute, length 160
    # one decode step reads the weights but the two position tables, plus the KV cache
    assert int8["step_bytes"] == int8["weights"]["total"] - 2 * 2048 * 5120 * 2 + int8["kv_cache"]


def test_inference_peak_terms_by_hand():
    """13B INT8 on a CPU (batch 1, length 160, 32 new tokens: prompts up to 128, one prefill of
    128), every term written out; and FP16 on an NPU (length 2048, prompts up to 1920 -> 2048)."""
    from codegeex_ms.budget.inference import build_inference_plan
    cpu = build_inference_plan(_inference_cfg("infer_13b_cpu_int8"), capacity_gib=24, device="cpu")
    assert cpu["prompt_bucket"] == 128 and cpu["max_new_tokens"] == 32
    assert cpu["prefill_cache"] == 2 * 40 * 1 * 128 * 5120 * 4       # the prompt's own cache
    work = cpu["workspace"]
    assert work["head"] == 0                          # the FP16-weight kernel reads the table
    assert work["logits"] == 2 * 52224 * 4            # the last position only, twice
    assert work["layer"] == 6 * 128 * 5120 * 4 + 2 * 128 * 20480 * 4 + 2 * 40 * 128 * 128 * 4
    assert cpu["reserve"] == int(0.4 * GIB)
    weights = cpu["weights"]["total"]
    #   weights + decode pool + prefill cache + logits + layer (residual, MLP, scores)
    assert cpu["peak_bytes"] == (weights + 262_144_000 + 209_715_200 + 417_792
                                 + 15_728_640 + 20_971_520 + 5_242_880 + int(0.4 * GIB))
    assert 13.1 * GIB < cpu["peak_bytes"] < 13.2 * GIB and cpu["fits"]
    npu = build_inference_plan(_inference_cfg("infer_13b_single_npu"))
    assert npu["device"] == "npu" and npu["reserve"] == 2 * GIB
    assert npu["prompt_bucket"] == 2048 and npu["prefill_cache"] == npu["kv_cache"]
    assert npu["workspace"]["head"] == 0              # FP16 table, FP16 compute: no cast
    # without the kernel (fused_kernels off, or not a CPU) the FP16 table is widened 2048 rows at a time
    off = build_inference_plan(load_config(CONFIG_DIR / "infer_13b_cpu_int8.yaml", ("model.fused_kernels=off",)),
                               capacity_gib=24, device="cpu")
    assert off["workspace"]["head"] == 2048 * 5120 * (2 + 4)
    assert off["peak_bytes"] == cpu["peak_bytes"] + 2048 * 5120 * 6
    assert npu["workspace"]["layer"] == (6 * 2048 * 5120 * 2 + 2 * 2048 * 20480 * 2
                                         + 2 * 40 * 2048 * 2048 * 4)
    assert npu["peak_bytes"] == (npu["weights"]["total"] + 2 * npu["kv_cache"]
                                 + npu["workspace"]["total"] + 2 * GIB)
    with pytest.raises(ValueError, match="device 'gpu'"):
        build_inference_plan(_inference_cfg("infer_13b_cpu_int8"), device="gpu")


@pytest.mark.parametrize("length,new,bucket", [(160, 32, 128), (160, 1, 160), (2048, 128, 2048),
                                               (20, 19, 16), (10, 5, 10), (300, 44, 256), (300, 43, 300)])
def test_prompt_bucket_by_hand(length, new, bucket):
    """The generator's prefill shape: power of two >= the longest prompt, >= 16, <= the length."""
    from codegeex_ms.budget.inference import prompt_bucket
    assert prompt_bucket(length, new) == bucket


def test_head_bytes_by_dtypes():
    """Chunked when widening (2048 rows, or the whole table if smaller), whole cast when narrowing,
    nothing with the CPU's FP16-weight kernel."""
    from types import SimpleNamespace
    from codegeex_ms.budget.inference import head_bytes
    mdl = lambda p, c, v, fused="auto": SimpleNamespace(param_dtype=p, compute_dtype=c, vocab_size=v,  # noqa: E731
                                                        hidden_size=64, fused_kernels=fused)
    assert head_bytes(mdl("float16", "float32", 52224), "cpu") == 0
    assert head_bytes(mdl("float16", "float32", 52224, "off"), "cpu") == 2048 * 64 * 6
    assert head_bytes(mdl("float16", "float32", 52224)) == 2048 * 64 * 6
    assert head_bytes(mdl("float16", "float32", 300)) == 300 * 64 * 6
    assert head_bytes(mdl("float32", "float16", 52224)) == 52224 * 64 * 2
    assert head_bytes(mdl("float32", "float32", 52224)) == 0


def test_cli_device_cpu_uses_the_measured_reserve(capsys):
    assert plan_cli.main(["--config", "infer_13b_cpu_int8", "--capacity-gib", "24", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "device cpu" in text and "reserve (runtime)" in text and "    0.40 GiB" in text
    assert "total 13.1" in text and "-> FITS" in text


def test_largest_batch_by_length_is_the_boundary():
    """Brute force at the boundary: the reported length fits, one more position does not (or it
    is the model's limit)."""
    from codegeex_ms.budget.inference import GIB, build_inference_plan, inference_total
    cfg = _inference_cfg("infer_13b_cpu_int8")
    plan = build_inference_plan(cfg, capacity_gib=24, reserve_gib=2)
    new = plan["max_new_tokens"]
    for batch, length in plan["largest_length_per_batch"].items():
        assert inference_total(cfg.model, batch, length, 2 * GIB, new) <= 24 * GIB
        if length < cfg.model.max_position_embeddings:
            assert inference_total(cfg.model, batch, length + 1, 2 * GIB, new) > 24 * GIB
    b = plan["largest_batch_at_length"]
    assert plan["largest_length_per_batch"][b] >= 160
