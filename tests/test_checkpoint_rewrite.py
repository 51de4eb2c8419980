"""The one checkpoint rewrite pipeline (``checkpoint.rewrite``) with a transform of its own."""

import numpy as np
import pytest

from codegeex_ms.checkpoint import SafetensorsReader, TorchZipReader
from codegeex_ms.checkpoint.rewrite import Transform, rewrite_checkpoint


def test_a_custom_transform_sees_every_tensor_once_and_writes_its_metadata(golden, tmp_path):
    seen = []

    def doubled(pairs):
        for name, array in pairs:
            seen.append(name)
            yield name, array * np.float32(2)

    heads = Transform(tensors=doubled, metadata=lambda weights, sizes: {"heads": str(sizes.num_attention_heads)})
    out = tmp_path / "doubled.safetensors"
    done = rewrite_checkpoint(golden["pt"], out, "safetensors", heads, dtype="float32", num_heads=4)
    assert done.sizes.num_attention_heads == 4 and done.sizes.hidden_size == 64
    assert list(done.outputs) == seen == list(done.inputs)          # release order, once each
    assert {i.dtype for i in done.outputs.values()} == {"float32"}
    assert {i.dtype for i in done.inputs.values()} == {"float16"}   # what the file stored
    with TorchZipReader(golden["pt"]) as src, SafetensorsReader(out) as dst:
        assert dst.metadata == {"heads": "4"}
        for name in seen:
            want = src.read("module." + name).astype(np.float32) * 2
            assert np.array_equal(dst.read(name), want), name


def test_a_refusing_transform_or_a_bad_request_writes_nothing(golden, tmp_path):
    def refuse(weights):
        raise ValueError(f"{weights.path}: not this one")

    with pytest.raises(ValueError, match="not this one"):
        rewrite_checkpoint(golden["pt"], tmp_path / "x.ckpt", "ckpt", Transform(refuse=refuse))
    with pytest.raises(ValueError, match="unsupported dtype 'int4'"):
        rewrite_checkpoint(golden["pt"], tmp_path / "x.ckpt", "ckpt", dtype="int4")
    with pytest.raises(ValueError, match="same file"):
        rewrite_checkpoint(golden["pt"], golden["pt"], "pt")
    assert list(tmp_path.iterdir()) == []
