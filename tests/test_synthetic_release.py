"""The synthetic release and the streaming 13B pipeline at a small size: write -> torch.load(mmap)
-> convert -> verify bit for bit -> quantize (the same functions ``bench/bench_13b_cpu.py`` runs
on the 26 GB file)."""

from dataclasses import replace

import numpy as np
import pytest

from codegeex_ms.checkpoint import open_weights, write_checkpoint
from codegeex_ms.checkpoint.layout import CODEGEEX_13B, num_parameters, release_key_path, release_layout
from codegeex_ms.checkpoint.synthetic import synthetic_tensor, write_synthetic_release
from codegeex_ms.convert import convert_checkpoint, verify_conversion

SMALL = replace(CODEGEEX_13B, vocab_size=300, hidden_size=64, ffn_hidden_size=256, num_layers=2,
                max_position_embeddings=40, num_attention_heads=2)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "release.pt"
    assert write_synthetic_release(path, SMALL, seed=7) == num_parameters(release_layout(SMALL))
    return path


def test_13b_layout_has_the_release_parameter_count():
    assert num_parameters(release_layout(CODEGEEX_13B)) == 12_873_943_040


def test_torch_load_mmap_reads_the_seeds_values(release):
    torch = pytest.importorskip("torch", reason="torch (a test dependency) is needed to check torch.load")
    state = torch.load(release, mmap=True, weights_only=True)
    assert list(state) == ["module"]
    layout = release_layout(SMALL)
    for index, (name, shape) in enumerate(layout.items()):
        node = state
        for key in release_key_path(name):
            node = node[key]
        assert node.dtype == torch.float16 and tuple(node.shape) == shape, name
        got = node.numpy()
        assert got.tobytes() == synthetic_tensor(7, index, shape).tobytes(), name


def test_values_are_finite_in_range_and_seeded(tmp_path, release):
    a = synthetic_tensor(7, 3, (50, 64))
    # exponent bits forced to 01xxx: every magnitude in [2^-7, 2), so quantizable and never zero
    mags = np.abs(a.astype(np.float32))
    assert mags.min() >= 2.0 ** -7 and mags.max() < 2.0
    assert (a < 0).mean() == pytest.approx(0.5, abs=0.05)  # sign bit is a fair coin
    assert len(np.unique(a)) > 1000  # random mantissas, not a constant pattern
    assert synthetic_tensor(8, 3, (50, 64)).tobytes() != a.tobytes()
    assert synthetic_tensor(7, 4, (50, 64)).tobytes() != a.tobytes()
    # the file itself is deterministic for the seed
    again = tmp_path / "again.pt"
    write_synthetic_release(again, SMALL, seed=7)
    assert again.read_bytes() == release.read_bytes()


def test_convert_is_verified_bit_for_bit_and_damage_is_caught(tmp_path, release):
    out = tmp_path / "fp16.safetensors"
    convert_checkpoint(release, out, num_heads=SMALL.num_attention_heads)
    report = verify_conversion(release, out)
    assert report["tensors"] == len(release_layout(SMALL))
    assert report["bytes"] == 2 * num_parameters(release_layout(SMALL))
    # a well-formed file whose last tensor differs from the release in one bit
    bad = tmp_path / "bad.safetensors"
    with open_weights(out) as good:
        infos = dict(good.infos)

        def tensors():
            for name in infos:
                array = good.read(name)
                if name.endswith("final_layernorm.bias"):
                    array.view(np.uint16)[-1] ^= 1
                yield name, array

        write_checkpoint(bad, infos, tensors())
    with pytest.raises(ValueError, match="final_layernorm.bias' differs"):
        verify_conversion(release, bad)


def test_quantized_release_dequantizes_within_half_a_step(tmp_path, release):
    from codegeex_ms.quantize import quantize_checkpoint  # pylint: disable=import-outside-toplevel
    fp16 = tmp_path / "fp16.safetensors"
    int8 = tmp_path / "int8.safetensors"
    convert_checkpoint(release, fp16, num_heads=SMALL.num_attention_heads)
    quantize_checkpoint(fp16, int8)
    name = "language_model.transformer.layers.1.mlp.dense_4h_to_h.weight"
    with open_weights(release) as src, open_weights(int8) as q:
        w = src.read(name).astype(np.float64)
        codes, scale = q.read(name), q.read(name + "_scale")
        assert codes.dtype == np.int8 and scale.dtype == np.float32
        # symmetric per-row INT8: scale = absmax/127 and |w - code*scale| <= scale/2 (+ FP32 rounding)
        np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
        err = np.abs(w - codes.astype(np.float64) * scale[:, None])
        assert (err <= scale[:, None] * (0.5 + 1e-5)).all()
        bias = "language_model.transformer.layers.1.mlp.dense_4h_to_h.bias"
        assert q.read(bias).tobytes() == src.read(bias).tobytes()


def test_memory_mapped_int8_load_equals_the_regular_load(tmp_path, release):
    """The 13B bench's loading path at a small size: an INT8 safetensors mapped into the network
    (every byte mapped, no tensor cast) gives the same logits as reading it tensor by tensor."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.build import build_model  # pylint: disable=import-outside-toplevel
    from codegeex_ms.data.masks import causal_mask, positions  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.quant import weight_bytes  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.quant import load_quantized, load_quantized_mmap  # pylint: disable=import-outside-toplevel
    from codegeex_ms.quantize import quantize_checkpoint  # pylint: disable=import-outside-toplevel
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fp16, int8 = tmp_path / "fp16.safetensors", tmp_path / "int8.safetensors"
    convert_checkpoint(release, fp16, num_heads=SMALL.num_attention_heads)
    quantize_checkpoint(fp16, int8)
    cfg = _small_int8_config()
    mapped, loaded = build_model(cfg, allocate=False), build_model(cfg, allocate=False)
    assert load_quantized_mmap(mapped, int8) == weight_bytes(mapped)["total"]
    load_quantized(loaded, int8)
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) * 7 % SMALL.vocab_size
    args = (ms.Tensor(ids), ms.Tensor(positions(2, 6)), ms.Tensor(causal_mask(2, 6)))
    mapped.set_train(False)
    loaded.set_train(False)
    assert np.array_equal(mapped(*args).asnumpy(), loaded(*args).asnumpy())
    # load_model maps an INT8 safetensors the same way, and a write to a mapped parameter's view
    # is copy-on-write: the file keeps its bytes (its manifest still verifies)
    from codegeex_ms.checkpoint.atomic import file_digest, read_manifest  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.build import load_model  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.quant import map_safetensors  # pylint: disable=import-outside-toplevel
    model = load_model(cfg, str(int8))
    model.set_train(False)
    assert np.array_equal(model(*args).asnumpy(), loaded(*args).asnumpy())
    view = map_safetensors(int8)["language_model.transformer.layers.0.mlp.dense_h_to_4h.weight"]
    view[0, :4] = 99
    assert (view[0, :4] == 99).all()
    assert file_digest(int8)[1] == read_manifest(int8)["sha256"]


def _small_int8_config(*overrides):
    from codegeex_ms.config import load_config  # pylint: disable=import-outside-toplevel
    return load_config("ascend_configs/infer_13b_cpu_int8.yaml", overrides + (
        f"model.vocab_size={SMALL.vocab_size}", f"model.real_vocab_size={SMALL.vocab_size}",
        f"model.hidden_size={SMALL.hidden_size}", f"model.num_layers={SMALL.num_layers}",
        f"model.num_heads={SMALL.num_attention_heads}", f"model.ffn_hidden_size={SMALL.ffn_hidden_size}",
        f"model.max_position_embeddings={SMALL.max_position_embeddings}", "train.seq_length=32",
        "inference.max_length=32", "model.eod_token_id=0")).model


@pytest.mark.parametrize("fused,train", [("off", False), ("on", False), ("on", True)])
def test_tied_head_without_a_widened_table_equals_one_widened_matmul(monkeypatch, fused, train):
    """FP16 table, FP32 compute: the head either runs the FP16-weight kernel (inference) or widens
    128-row chunks (128 + 128 + 44 of 300 rows: no kernel, or training) and gives
    hidden · table_fp32ᵀ (NumPy, float64 reference) for every row either way."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model import codegeex  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.build import build_model  # pylint: disable=import-outside-toplevel
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    monkeypatch.setattr(codegeex, "HEAD_CHUNK_ROWS", 128)
    net = build_model(_small_int8_config(f"model.fused_kernels={fused}"))
    net.set_train(train)
    assert net.head_spans == ((0, 128), (128, 128), (256, 44))
    assert (net.head_fused is not None) == (fused == "on")
    if fused == "on" and not train:   # the chunked path must not run: it would fail loudly
        monkeypatch.setattr(net, "slice", None)
    table = net.language_model.embedding.word_embeddings.weight.asnumpy()
    assert table.dtype == np.float16
    hidden = np.random.default_rng(3).standard_normal((2, 3, SMALL.hidden_size)).astype(np.float32)
    got = net.logits(ms.Tensor(hidden)).asnumpy()
    want = hidden.astype(np.float64) @ table.astype(np.float64).T
    assert got.shape == (2, 3, SMALL.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert codegeex.head_chunks(300, 300) == ((0, 300),) and codegeex.head_chunks(5, 2)[-1] == (4, 1)
    with pytest.raises(ValueError, match="chunk_rows"):
        codegeex.head_chunks(300, 0)


def test_mapped_load_checks_the_manifest_and_trusts_only_an_unchanged_stamp(tmp_path, release, monkeypatch):
    """Mapping the INT8 file hashes it once and stamps it; an unchanged file is then not hashed
    again; a rewritten (bit-flipped) file is hashed and rejected; a truncated one is rejected by
    size even though a stamp exists."""
    from codegeex_ms.checkpoint import atomic  # pylint: disable=import-outside-toplevel
    from codegeex_ms.model.quant import map_safetensors  # pylint: disable=import-outside-toplevel
    from codegeex_ms.quantize import quantize_checkpoint  # pylint: disable=import-outside-toplevel
    fp16, int8 = tmp_path / "fp16.safetensors", tmp_path / "int8.safetensors"
    convert_checkpoint(release, fp16, num_heads=SMALL.num_attention_heads)
    quantize_checkpoint(fp16, int8)
    hashed = []
    real_digest = atomic.file_digest
    monkeypatch.setattr(atomic, "file_digest", lambda p: hashed.append(p) or real_digest(p))
    monkeypatch.setattr(atomic, "_VERIFIED", {})
    assert len(map_safetensors(int8)) > 0 and len(hashed) == 1
    assert atomic.stamp_path(int8).is_file()
    atomic._VERIFIED.clear()   # a new process: only the stamp remains
    map_safetensors(int8)
    assert len(hashed) == 1
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0x10
    int8.write_bytes(bytes(data))     # same size, new mtime: the stamp no longer matches
    atomic._VERIFIED.clear()
    with pytest.raises(atomic.IntegrityError, match="sha256 does not match"):
        map_safetensors(int8)
    assert len(hashed) == 2
    data[len(data) // 2] ^= 0x10
    int8.write_bytes(bytes(data[:-8]))
    with pytest.raises(atomic.IntegrityError, match="truncated"):
        map_safetensors(int8)
