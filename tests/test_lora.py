"""LoRA adapters: the Cell against NumPy, adapter-off = base, freezing and names, adapter files,
merging (FP32/FP16/INT8) against the unmerged network and NumPy, and the lora config section."""

import json

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.config import CONFIG_DIR, ConfigError, load_config

SEQ = 8
OVERRIDES = ("model.vocab_size=96", "model.real_vocab_size=96", "model.eod_token_id=95",
             "model.hidden_size=32", "model.num_heads=4", "model.ffn_hidden_size=64",
             "model.num_layers=2", "model.max_position_embeddings=32", "model.dropout=0.0",
             "lora.rank=4", "lora.alpha=8.0", "lora.dropout=0.0",
             "train.seq_length=16", "inference.max_length=32")


@pytest.fixture(autouse=True, scope="module")
def graph_mode():
    from codegeex_ms.env import runtime
    runtime.setup("graph", "CPU", seed=0)


def tiny(*extra):
    return load_config(str(CONFIG_DIR / "tiny.yaml"), OVERRIDES + tuple(extra))


def inputs(cfg, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.model.real_vocab_size, (batch, SEQ)).astype(np.int32)
    pos = np.tile(np.arange(SEQ, dtype=np.int32), (batch, 1))
    mask = np.tril(np.ones((SEQ, SEQ), np.float32))
    return ms.Tensor(ids), ms.Tensor(pos), ms.Tensor(np.tile(mask, (batch, 1, 1)))


def logits(model, cfg):
    model.set_train(False)
    return model(*inputs(cfg)).asnumpy()


def base_checkpoint(tmp_path, cfg, seed=3, name="base.ckpt"):
    """A random base with non-trivial biases and LayerNorms, saved as FP32 .ckpt."""
    from codegeex_ms.checkpoint import save_weights
    from codegeex_ms.model.build import build_model
    rng = np.random.default_rng(seed)
    net = build_model(cfg.model)
    arrays = {n: (0.05 * rng.standard_normal(p.shape)).astype(np.float32) + (1.0 if "layernorm.weight" in n else 0.0)
              for n, p in net.parameters_and_names()}
    save_weights(tmp_path / name, arrays)
    return tmp_path / name, arrays


def lora_model(cfg, path, random_b=True, seed=0):
    """The base from ``path`` with adapters whose B is random (so the adapters change outputs)."""
    from codegeex_ms.lora import apply_lora
    from codegeex_ms.model.build import load_model
    model = load_model(cfg.model, str(path))
    wrappers = apply_lora(model, cfg.lora, seed=seed)
    if random_b:
        rng = np.random.default_rng(seed + 100)
        for w in wrappers:
            w.lora_b.set_data(ms.Tensor((0.1 * rng.standard_normal(w.lora_b.shape)).astype(np.float32)))
    return model, wrappers


def test_lora_linear_matches_numpy():
    """y = x·Wᵀ + b + (alpha/r)·(x·Aᵀ)·Bᵀ, computed in float64 by NumPy. FP32 products over
    in=16 terms of O(1) values: errors ~1e-6, so rtol/atol 1e-5."""
    from codegeex_ms.lora.layers import LoRALinear
    from codegeex_ms.model.layers import Linear
    rng = np.random.default_rng(1)
    base = Linear(16, 12)
    w = rng.standard_normal((12, 16)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    base.weight.set_data(ms.Tensor(w))
    base.bias.set_data(ms.Tensor(b))
    a = rng.standard_normal((3, 16)).astype(np.float32)
    cell = LoRALinear(base, 3, 6.0, 0.0, a)
    bb = rng.standard_normal((12, 3)).astype(np.float32)
    cell.lora_b.set_data(ms.Tensor(bb))
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    got = cell(ms.Tensor(x)).asnumpy()
    x64 = x.astype(np.float64)
    want = x64 @ w.T + b + 2.0 * (x64 @ a.T.astype(np.float64)) @ bb.T.astype(np.float64)
    assert got.shape == (2, 5, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cell.delta(), 2.0 * bb.astype(np.float64) @ a, rtol=1e-6, atol=1e-6)


def test_init_a_kaiming_bound_and_seeded():
    from codegeex_ms.lora.layers import init_a
    a = init_a(8, 400, "kaiming", np.random.default_rng(0))
    assert a.dtype == np.float32 and a.shape == (8, 400)
    assert np.abs(a).max() <= 1 / 20 and np.abs(a).max() > 0.9 / 20  # bound 1/sqrt(400)
    np.testing.assert_array_equal(a, init_a(8, 400, "kaiming", np.random.default_rng(0)))
    g = init_a(8, 4000, "gaussian", np.random.default_rng(0))
    assert abs(g.std() - 1 / 8) < 0.01  # 32000 draws: std error ~0.0005


def test_adapter_off_and_fresh_adapter_equal_the_base(tmp_path):
    """Adapters switched off give the base's logits bit for bit; fresh adapters (B = 0) give the
    same values (adding exact zeros in FP32); trained-looking adapters change them."""
    from codegeex_ms.lora import set_adapters_enabled
    from codegeex_ms.model.build import load_model
    cfg = tiny("lora.targets=[query,key,value,dense,dense_h_to_4h,dense_4h_to_h]")
    path, _ = base_checkpoint(tmp_path, cfg)
    want = logits(load_model(cfg.model, str(path)), cfg)
    off, _ = lora_model(cfg, path)
    set_adapters_enabled(off, False)
    assert logits(off, cfg).tobytes() == want.tobytes()
    fresh, _ = lora_model(cfg, path, random_b=False)
    np.testing.assert_array_equal(logits(fresh, cfg), want)
    on, _ = lora_model(cfg, path)
    assert np.abs(logits(on, cfg) - want).max() > 1e-3


def test_freezing_names_and_trainable_parameters(tmp_path):
    from codegeex_ms.lora import is_frozen
    cfg = tiny("lora.targets=[query,dense_4h_to_h]", "lora.top_query=false")
    path, arrays = base_checkpoint(tmp_path, cfg)
    model, wrappers = lora_model(cfg, path)
    assert len(wrappers) == 2 * cfg.model.num_layers  # two targets per decoder layer, no top-query
    names = {p.name for p in model.get_parameters()}
    adapter_names = {f"language_model.transformer.layers.{i}.{m}.{x}"
                     for i in range(2) for m in ("attention.query", "mlp.dense_4h_to_h") for x in ("lora_a", "lora_b")}
    assert names == set(arrays) | adapter_names
    assert {p.name for p in model.trainable_params()} == adapter_names
    for p in model.get_parameters():
        assert is_frozen(p) == (p.name in arrays)
        assert p.dtype == ms.float32
    shapes = {p.name: tuple(p.shape) for p in model.trainable_params()}
    assert shapes["language_model.transformer.layers.0.attention.query.lora_a"] == (4, 32)
    assert shapes["language_model.transformer.layers.1.mlp.dense_4h_to_h.lora_a"] == (4, 64)
    assert shapes["language_model.transformer.layers.1.mlp.dense_4h_to_h.lora_b"] == (32, 4)


def test_adapter_file_roundtrip_and_attach(tmp_path):
    """save_adapter → load_model_with_adapter reproduces the adapted network's logits exactly and
    records the config and the base's identity (sha256 of the file)."""
    import hashlib
    from codegeex_ms.lora import AdapterFile, load_model_with_adapter, save_adapter
    from codegeex_ms.lora.adapters import base_identity
    cfg = tiny()
    path, _ = base_checkpoint(tmp_path, cfg)
    model, _ = lora_model(cfg, path)
    ident = base_identity(path)
    assert ident["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, ident)
    f = AdapterFile(tmp_path / "ad.ckpt")
    assert f.base == ident and f.config.rank == 4 and f.config.targets == ["query", "key", "value", "dense"]
    again = load_model_with_adapter(cfg.model, str(path), tmp_path / "ad.ckpt")
    assert logits(again, cfg).tobytes() == logits(model, cfg).tobytes()
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        AdapterFile(path)


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_merged_model_equals_base_plus_adapter(tmp_path, quant):
    """Merge to FP32 and load into a plain network: logits equal the unmerged network's within
    FP32 rounding (the two differ only in summation order: x·(W+ΔW)ᵀ vs x·Wᵀ + (x·Aᵀ)·Bᵀ·s;
    logits are O(1) sums over 32-wide layers, so 1e-5 absolute is ~100 ulps of slack). With an
    INT8 base the merge starts from the dequantized weights the INT8 network computes with."""
    from codegeex_ms.lora import save_adapter
    from codegeex_ms.lora.merge import merge_adapter
    from codegeex_ms.model.build import load_model
    cfg = tiny("lora.targets=[query,value,dense_h_to_4h]")
    path, _ = base_checkpoint(tmp_path, cfg)
    if quant == "int8":
        from codegeex_ms.quantize import quantize_checkpoint
        quantize_checkpoint(path, tmp_path / "base_int8.ckpt")
        path = tmp_path / "base_int8.ckpt"
    model, _ = lora_model(cfg, path)
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, None)
    out = tmp_path / "merged.ckpt"
    info = merge_adapter(path, tmp_path / "ad.ckpt", out, dtype="float32")
    assert info["merged"] == 3 * (cfg.model.num_layers + 1)
    merged = load_model(cfg.model, str(out))
    assert merged.language_model.transformer.layers[0].attention.query.weight.dtype == ms.float32
    got, want = logits(merged, cfg), logits(model, cfg)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_merge_fp16_and_int8_outputs_match_numpy(tmp_path):
    """FP16 output = (W + s·B·A) rounded once to FP16; INT8 output = quantize_rows of the same FP32
    sum, bit for bit (NumPy reference written here); untouched tensors are only cast."""
    from codegeex_ms.checkpoint import open_weights
    from codegeex_ms.lora import save_adapter
    from codegeex_ms.lora.merge import merge_adapter
    cfg = tiny("lora.targets=[dense_4h_to_h]")
    path, arrays = base_checkpoint(tmp_path, cfg)
    model, wrappers = lora_model(cfg, path)
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, None)
    name = "language_model.transformer.layers.1.mlp.dense_4h_to_h.weight"
    w = wrappers[1]
    delta = np.float32(2.0) * (w.lora_b.asnumpy() @ w.lora_a.asnumpy())
    merged32 = arrays[name] + delta
    merge_adapter(path, tmp_path / "ad.ckpt", tmp_path / "m16.ckpt", dtype="float16")
    merge_adapter(path, tmp_path / "ad.ckpt", tmp_path / "m8.safetensors", dtype="int8")
    with open_weights(tmp_path / "m16.ckpt") as f:
        np.testing.assert_array_equal(f.read(name), merged32.astype(np.float16))
        other = "language_model.transformer.layers.1.mlp.dense_h_to_4h.weight"
        np.testing.assert_array_equal(f.read(other), arrays[other].astype(np.float16))
    absmax = np.abs(merged32).max(axis=1)
    scale = absmax / np.float32(127)
    q = np.clip(np.rint(merged32 / scale[:, None]), -127, 127).astype(np.int8)
    with open_weights(tmp_path / "m8.safetensors") as f:
        assert f.metadata["weight_quant"] == "int8"
        np.testing.assert_array_equal(f.read(name), q)
        np.testing.assert_array_equal(f.read(name + "_scale"), scale)


def test_merge_refuses_mismatched_base(tmp_path):
    from codegeex_ms.lora import save_adapter
    from codegeex_ms.lora.merge import merge_adapter
    cfg = tiny()
    path, _ = base_checkpoint(tmp_path, cfg)
    model, _ = lora_model(cfg, path)
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, None)
    small = tiny("model.hidden_size=16")
    other, _ = base_checkpoint(tmp_path, small, name="other.ckpt")
    with pytest.raises(ValueError, match="lacks or holds with another shape"):
        merge_adapter(other, tmp_path / "ad.ckpt", tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


def test_lora_config_section():
    cfg = tiny()
    assert cfg.lora.rank == 4 and cfg.lora.targets == ["query", "key", "value", "dense"]
    assert load_config(str(CONFIG_DIR / "tiny.yaml")).lora.rank == 0
    with pytest.raises(ConfigError) as err:
        tiny("lora.targets=[query,mlp]", "lora.alpha=0", "lora.dropout=1.0", "lora.init=xavier")
    text = str(err.value)
    for key in ("lora.targets", "lora.alpha", "lora.dropout", "lora.init"):
        assert key in text, key
    with pytest.raises(ConfigError, match="lora.targets: expected list"):
        tiny("lora.targets=query")
    assert json.loads(json.dumps(cfg.to_dict()))["lora"]["rank"] == 4


def test_merge_cli(tmp_path):
    """The command writes what merge_adapter writes; a non-adapter file is refused in one line
    with exit status 2 and nothing written."""
    import os
    import subprocess
    import sys
    from codegeex_ms.checkpoint import open_weights
    from codegeex_ms.lora import save_adapter
    from codegeex_ms.lora.merge import merge_adapter
    from codegeex_ms.env.paths import REPO_ROOT
    cfg = tiny()
    path, _ = base_checkpoint(tmp_path, cfg)
    model, _ = lora_model(cfg, path)
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, None)
    merge_adapter(path, tmp_path / "ad.ckpt", tmp_path / "lib.safetensors", dtype="int8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GLOG_v": "3"}
    cmd = [sys.executable, "-m", "codegeex_ms.lora", "merge", "--base", str(path), "--quiet"]
    ok = subprocess.run(cmd + ["--adapter", str(tmp_path / "ad.ckpt"), "--out", str(tmp_path / "cli.safetensors"),
                               "--dtype", "int8"], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "12 weights merged" in ok.stdout  # q/k/v/dense × (2 layers + top-query)
    with open_weights(tmp_path / "lib.safetensors") as a, open_weights(tmp_path / "cli.safetensors") as b:
        assert a.infos == b.infos
        for name in a.infos:
            assert a.read(name).tobytes() == b.read(name).tobytes(), name
    bad = subprocess.run(cmd + ["--adapter", str(path), "--out", str(tmp_path / "x.ckpt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a LoRA adapter" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.ckpt").exists()


def test_generate_with_adapter_equals_generate_with_merged_checkpoint(tmp_path):
    """``load_generator(..., adapter=A)`` (what generate/evaluate/serve's --adapter use) decodes
    the same greedy tokens, through the KV cache, as the FP32 merged checkpoint, and not the
    base's. Greedy argmax over logits that agree to ~1e-6 (see the merge test) picks the same
    tokens unless two logits tie within that; with random weights and 8 steps none do."""
    from codegeex_ms.inference.loading import load_generator
    from codegeex_ms.inference.sampling import SamplingParams
    from codegeex_ms.lora import save_adapter
    from codegeex_ms.lora.merge import merge_adapter
    from codegeex_ms.env.paths import shared_data_dir
    tokenizer = shared_data_dir() / "codegeex_tokenizer"
    if not (tokenizer / "vocab.json").is_file():
        pytest.skip(f"CodeGeeX tokenizer missing in {tokenizer}")
    cfg = load_config(str(CONFIG_DIR / "tiny.yaml"), (
        "model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64", "model.dropout=0.0",
        "lora.rank=4", "lora.dropout=0.0", "lora.targets=[query,value,dense_4h_to_h]"))
    path, _ = base_checkpoint(tmp_path, cfg)
    model, wrappers = lora_model(cfg, path)
    for w in wrappers:  # large enough to change greedy choices of a random base
        w.lora_b.set_data(ms.Tensor(w.lora_b.asnumpy() * 30))
    save_adapter(tmp_path / "ad.ckpt", model, cfg.lora, None)
    merge_adapter(path, tmp_path / "ad.ckpt", tmp_path / "merged.ckpt", dtype="float32")
    greedy = SamplingParams(temperature=1.0, top_k=1)
    prompts = ["def add(a, b):", "int main() {"]

    def tokens(checkpoint, adapter=None):
        gen = load_generator(cfg, str(checkpoint), str(tokenizer), adapter=adapter)
        return [c.token_ids for c in gen.generate(prompts, 8, greedy, seed=0)]

    with_adapter = tokens(path, tmp_path / "ad.ckpt")
    assert with_adapter == tokens(tmp_path / "merged.ckpt")
    assert with_adapter != tokens(path)
