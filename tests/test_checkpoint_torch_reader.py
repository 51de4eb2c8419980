"""Reading PyTorch zip checkpoints without torch, and refusing unsafe or broken files."""

import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from codegeex_ms.checkpoint import (CheckpointFormatError, ModelSizes, TorchZipReader, UnsafePickleError,
                                    detect_format, open_weights, release_layout)
from codegeex_ms.checkpoint.dtypes import np_dtype


def _fixture_layout(config):
    # CodeGeeX's FFN is 4x hidden; the fixture's config.json names the other sizes.
    return release_layout(ModelSizes(vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
                                     ffn_hidden_size=4 * config["hidden_size"], num_layers=config["num_layers"],
                                     max_position_embeddings=config["max_position_embeddings"]))


def test_fixture_has_release_names_shapes_and_fp16(golden):
    expected = _fixture_layout(golden["config"])
    with TorchZipReader(golden["pt"]) as reader:
        assert list(reader.infos) == ["module." + name for name in expected]
        assert {n: i.shape for n, i in reader.infos.items()} == {"module." + n: s for n, s in expected.items()}
        assert {i.dtype for i in reader.infos.values()} == {"float16"}
        assert reader.metadata == {}
        word = reader.read("module.language_model.embedding.word_embeddings.weight")
    assert word.dtype == np.float16 and word.shape == (1024, 64) and word.flags.c_contiguous
    assert np.isfinite(word).all() and word.std() > 0  # real weights, not zeros


def test_fixture_values_match_torch_load(golden):
    torch = pytest.importorskip("torch", reason="torch not installed: cannot cross-check with torch.load")
    state = torch.load(golden["pt"], weights_only=True)["module"]["language_model"]
    with open_weights(golden["pt"]) as weights:
        assert weights.read("language_model.transformer.final_layernorm.bias").tobytes() == \
            state["transformer"]["final_layernorm.bias"].numpy().tobytes()
        for name, tensor in state["transformer"].items():
            assert weights.read("language_model.transformer." + name).tobytes() == tensor.numpy().tobytes(), name
        assert weights.read("language_model.topQueryEmbedding.top_query_embeddings.weight").tobytes() == \
            state["topQueryEmbedding"]["top_query_embeddings"]["weight"].numpy().tobytes()


def test_views_offsets_strides_and_dtypes_match_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: cannot create views with torch.save")
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    state = {
        "transposed": base.t(),                      # non-contiguous strides
        "offset_view": base[2:5, 3:7],               # storage offset + strides
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "bf16": torch.randn(5, 7).to(torch.bfloat16),
        "half": torch.randn(3, 2).half(),
        "long": torch.arange(-3, 4),
        "int": torch.arange(5, dtype=torch.int32),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "nested": {"deeper": {"w": torch.ones(2)}},
        "step": 17,
    }
    path = tmp_path / "views.pt"
    torch.save(state, path)
    with TorchZipReader(path) as reader:
        assert reader.metadata == {"step": "17"}
        for name, tensor in [(k, v) for k, v in state.items() if torch.is_tensor(v)] + \
                [("nested.deeper.w", state["nested"]["deeper"]["w"])]:
            array = reader.read(name)
            ref = tensor.contiguous()
            assert array.shape == tuple(ref.shape) and array.flags.c_contiguous, name
            if tensor.dtype == torch.bfloat16:
                assert array.dtype == np_dtype("bfloat16")
                assert array.view(np.uint16).tobytes() == ref.view(torch.int16).numpy().tobytes()
            else:
                assert array.dtype == ref.numpy().dtype and array.tobytes() == ref.numpy().tobytes(), name


def test_truncated_file_gives_clear_error(golden, tmp_path):
    data = golden["pt"].read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        TorchZipReader(broken)


def test_hand_made_tensor_pickle_reads(tmp_path):
    values = np.array([1.5, -2.0, 0.25, 8.0], np.float16)
    path = _zip_with_pickle(tmp_path, _tensor_pickle(numel=4), {"archive/data/0": values.tobytes()})
    with TorchZipReader(path) as reader:
        assert reader.read("t").tobytes() == values.tobytes()


def test_member_shorter_than_its_storage_is_reported(tmp_path):
    path = _zip_with_pickle(tmp_path, _tensor_pickle(numel=4), {"archive/data/0": b"\0" * 6})
    with TorchZipReader(path) as reader, pytest.raises(CheckpointFormatError, match="corrupt"):
        reader.read("t")


def test_legacy_format_asks_to_resave(tmp_path):
    legacy = tmp_path / "legacy.pt"
    # A pre-1.6 torch file starts with a pickled magic number (protocol 2, LONG1).
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")
    assert detect_format(legacy) == "pt"
    with pytest.raises(CheckpointFormatError, match="legacy.*torch.save"):
        TorchZipReader(legacy)


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("subprocess", "call"), ("torch", "load")])
@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_referencing_other_globals_is_refused_without_running(tmp_path, module, name, protocol):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if name in ("system", "call") else f"open({str(marker)!r}, 'w')"
    if protocol == 2:  # GLOBAL opcode
        ref = b"c" + f"{module}\n{name}\n".encode()
    else:  # STACK_GLOBAL opcode
        ref = _short_unicode(module) + _short_unicode(name) + b"\x93"
    arg = b"X" + struct.pack("<I", len(payload)) + payload.encode()
    data_pkl = b"\x80" + bytes([protocol]) + ref + arg + b"\x85R."
    assert not marker.exists()
    path = _zip_with_pickle(tmp_path, data_pkl)
    with pytest.raises(UnsafePickleError, match=f"'{module}.{name}'") as err:
        TorchZipReader(path)
    assert err.value.global_name == f"{module}.{name}"
    assert not marker.exists()  # the call was never made


def test_pickle_sanity_of_the_payload(tmp_path):
    """The os.system payload used above really runs under an unrestricted unpickler."""
    marker = tmp_path / "ran"
    payload = f"touch {marker}"
    data = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(payload)) + payload.encode() + b"\x85R."
    assert pickle.loads(data) == 0 and marker.exists()


def test_unknown_file_is_rejected(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="unrecognised checkpoint format"):
        detect_format(junk)


def _short_unicode(text: str) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text.encode()


def _tensor_pickle(numel: int) -> bytes:
    """Protocol-2 pickle of {"t": float16 tensor of ``numel`` elements in storage "0"}."""
    return (b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n"
            b"((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + b"K" + bytes([numel]) + b"tQK\x00K" + bytes([numel]) + b"\x85K\x01\x85\x89ccollections\n"
            b"OrderedDict\n)RtRs.")


def _zip_with_pickle(tmp_path, data_pkl: bytes, extra_members=None):
    path = tmp_path / "crafted.pt"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", b"3\n")
        for name, data in (extra_members or {}).items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return path
