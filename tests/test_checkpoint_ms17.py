"""Importing checkpoints of the original MindSpore 1.7 training code (names of reference section 2)."""

import logging

import mindspore as ms
import numpy as np
import pytest

from codegeex_ms.checkpoint import LayoutMismatchError, ModelSizes, TorchZipReader, ms17_name, open_weights, \
    release_layout
from codegeex_ms.convert import convert_checkpoint

SIZES = ModelSizes(vocab_size=32, hidden_size=8, ffn_hidden_size=16, num_layers=2, max_position_embeddings=4)


def _release_tensors():
    rng = np.random.default_rng(7)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in release_layout(SIZES).items()}


def _ms17_from_release(r):
    """The MindSpore 1.7 names of reference section 2, written out by hand; [in, out] weights transposed."""
    d = {"backbone.embedding.word_embedding.embedding_table": r["language_model.embedding.word_embeddings.weight"],
         "backbone.embedding.position_embedding.embedding_table":
             r["language_model.embedding.position_embeddings.weight"],
         "backbone.top_query_embedding.embedding_table":
             r["language_model.topQueryEmbedding.top_query_embeddings.weight"],
         "backbone.layernorm.gamma": r["language_model.transformer.final_layernorm.weight"],
         "backbone.layernorm.beta": r["language_model.transformer.final_layernorm.bias"]}
    blocks = [(f"backbone.blocks.{i}.", f"language_model.transformer.layers.{i}.") for i in range(2)]
    for src, dst in blocks + [("backbone.top_query_layer.", "language_model.transformer.topQueryLayer.")]:
        d[src + "layernorm1.gamma"] = r[dst + "input_layernorm.weight"]
        d[src + "layernorm1.beta"] = r[dst + "input_layernorm.bias"]
        d[src + "layernorm2.gamma"] = r[dst + "post_attention_layernorm.weight"]
        d[src + "layernorm2.beta"] = r[dst + "post_attention_layernorm.bias"]
        for ms_name, name in (("dense1", "query"), ("dense2", "key"), ("dense3", "value")):
            d[src + f"attention.{ms_name}.weight"] = r[dst + f"attention.{name}.weight"]
            d[src + f"attention.{ms_name}.bias"] = r[dst + f"attention.{name}.bias"]
        d[src + "attention.projection.weight"] = r[dst + "attention.dense.weight"].T.copy()
        d[src + "attention.projection.bias"] = r[dst + "attention.dense.bias"]
        d[src + "output.mapping.weight"] = r[dst + "mlp.dense_h_to_4h.weight"].T.copy()
        d[src + "output.mapping.bias"] = r[dst + "mlp.dense_h_to_4h.bias"]
        d[src + "output.projection.weight"] = r[dst + "mlp.dense_4h_to_h.weight"].T.copy()
        d[src + "output.projection.bias"] = r[dst + "mlp.dense_4h_to_h.bias"]
    return d


def _save_ms17(path, tensors):
    training_state = {f"adam_{m}.{n}": np.zeros_like(a) for n, a in tensors.items() for m in "mv"}
    training_state["global_step"] = np.array([100], np.int32)
    entries = {**tensors, **training_state}
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in entries.items()], str(path))


def test_name_table_examples():
    assert ms17_name("backbone.blocks.12.output.mapping.weight") == \
        ("language_model.transformer.layers.12.mlp.dense_h_to_4h.weight", True)
    assert ms17_name("backbone.top_query_layer.attention.dense2.bias") == \
        ("language_model.transformer.topQueryLayer.attention.key.bias", False)
    assert ms17_name("backbone.blocks.0.layernorm2.beta") == \
        ("language_model.transformer.layers.0.post_attention_layernorm.bias", False)
    assert ms17_name("adam_m.backbone.layernorm.gamma") is None


def test_ms17_checkpoint_converts_with_transposes(tmp_path, caplog):
    release = _release_tensors()
    source = tmp_path / "ms17.ckpt"
    _save_ms17(source, _ms17_from_release(release))
    with caplog.at_level(logging.WARNING):
        sizes = convert_checkpoint(source, tmp_path / "out.pt", dtype="float16")  # names auto-detected
    assert "ignoring 106 optimizer moment tensors" in caplog.text  # 53 weights x (adam_m, adam_v)
    assert "global_step" in caplog.text
    assert (sizes.num_layers, sizes.hidden_size, sizes.ffn_hidden_size) == (2, 8, 16)
    with TorchZipReader(tmp_path / "out.pt") as reader:
        assert list(reader.infos) == ["module." + n for n in release]
        for name, array in release.items():
            assert reader.read("module." + name).tobytes() == array.astype(np.float16).tobytes(), name


def test_ms17_view_keeps_fp32_and_transposes(tmp_path):
    release = _release_tensors()
    source = tmp_path / "ms17.ckpt"
    _save_ms17(source, _ms17_from_release(release))
    with open_weights(source, from_ms17=True) as weights:
        assert set(weights.infos) == set(release)
        name = "language_model.transformer.topQueryLayer.mlp.dense_4h_to_h.weight"
        assert weights.infos[name].shape == (8, 16)
        assert all(np.array_equal(weights.read(n), a) for n, a in release.items())


def test_unknown_backbone_names_are_reported_as_unexpected(tmp_path):
    tensors = _ms17_from_release(_release_tensors())
    tensors["backbone.blocks.0.attention.rotary.weight"] = np.zeros(3, np.float32)
    del tensors["backbone.blocks.1.output.mapping.bias"]
    source = tmp_path / "ms17.ckpt"
    _save_ms17(source, tensors)
    with pytest.raises(LayoutMismatchError) as err:
        convert_checkpoint(source, tmp_path / "out.pt", from_ms17=True)
    assert err.value.unexpected == ["backbone.blocks.0.attention.rotary.weight"]
    assert err.value.missing == ["language_model.transformer.layers.1.mlp.dense_h_to_4h.bias"]
    assert not (tmp_path / "out.pt").exists()
