"""plan for LoRA: parameter and byte counts against built networks, the 13B one-NPU figures, the CLI."""

import subprocess
import sys

import numpy as np

from codegeex_ms.config import CONFIG_DIR, load_config
from codegeex_ms.budget.lora import GIB, adapter_parameters, base_bytes, lora_plan, lora_training_memory
from codegeex_ms.env.paths import REPO_ROOT

TINY = ("model.vocab_size=96", "model.real_vocab_size=96", "model.eod_token_id=95",
        "model.hidden_size=32", "model.num_heads=4", "model.ffn_hidden_size=64", "model.num_layers=2",
        "model.max_position_embeddings=32", "train.seq_length=16", "inference.max_length=32",
        "lora.rank=3", "lora.targets=[key,dense,dense_4h_to_h]")


def test_counts_match_built_networks():
    """Trainable parameters of a network with adapters, and the bytes of its FP16 and INT8 bases
    (as built: MindSpore parameters counted one by one)."""
    from codegeex_ms.lora import apply_lora
    from codegeex_ms.model.build import build_model
    from codegeex_ms.model.quant import weight_bytes
    for top_query in (True, False):
        cfg = load_config(str(CONFIG_DIR / "tiny.yaml"), TINY + (f"lora.top_query={top_query}",))
        net = build_model(cfg.model, allocate=False)
        apply_lora(net, cfg.lora)
        assert adapter_parameters(cfg.model, cfg.lora) == sum(int(np.prod(p.shape)) for p in net.trainable_params())
    fp16 = load_config(str(CONFIG_DIR / "tiny.yaml"), TINY + ("model.param_dtype=float16",))
    assert base_bytes(fp16.model, "float16") == weight_bytes(build_model(fp16.model, allocate=False))["total"]
    int8 = load_config(str(CONFIG_DIR / "tiny.yaml"), TINY + ("model.param_dtype=float16", "model.weight_quant=int8"))
    assert base_bytes(int8.model, "int8") == weight_bytes(build_model(int8.model, allocate=False))["total"]


def test_13b_one_npu_plan_fits_32gb_with_the_fp16_base():
    cfg = load_config(str(CONFIG_DIR / "finetune_13b_lora_1npu.yaml"))
    plan = lora_plan(cfg)
    # 160 adapted Linears (4 per layer, 39 layers + top-query), each 16·(5120 + 5120) parameters
    assert plan["lora"]["adapter_parameters"] == 160 * 16 * 10240 == 26_214_400
    mem = plan["memory"]["float16_recompute"]
    assert mem["base_weights"] == 2 * 12_873_943_040
    assert mem["adam_moments"] == 8 * 26_214_400
    sbh = 2048 * 5120
    # kept layer inputs (40 · 2 bytes · s·b·h) + one layer live: (8 + 2)·sbh + 24·sbh + 7·40·s²
    # + the four adapters' FP32 inputs with masks (5·s·5120 each) and rank-16 intermediates
    one_layer = 10 * sbh + 24 * sbh + 7 * 40 * 2048 ** 2 + 4 * (5 * sbh + 4 * 2048 * 16)
    assert mem["activations_layers"] == 40 * 2 * sbh + one_layer
    assert plan["chosen"] == "float16_recompute" and plan["fits"]
    assert 28 * GIB < mem["total"] <= 32 * GIB
    int8 = plan["memory"]["int8_recompute"]
    assert int8["total"] < mem["total"] - 10 * GIB  # ~12 GB less base
    assert not plan["memory"]["float16_no_recompute"]["total"] <= 32 * GIB  # recompute is required
    # one more sequence per micro-batch would not fit on top of the FP16 base
    bigger = load_config(str(CONFIG_DIR / "finetune_13b_lora_1npu.yaml"), ("train.micro_batch_size=2",))
    assert lora_training_memory(bigger, "float16", True, 2 * GIB)["total"] > 32 * GIB


def test_plan_cli_prints_the_lora_report():
    r = subprocess.run([sys.executable, "-m", "codegeex_ms.plan", "--config", "finetune_13b_lora_1npu"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "26,214,400 trainable parameters" in r.stdout
    assert "config uses the FP16 base, recompute: total 30." in r.stdout and "-> FITS" in r.stdout
