"""Streaming .ckpt and .safetensors files, checked against MindSpore's and safetensors' own readers/writers."""

import mindspore as ms
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from codegeex_ms.checkpoint import (CheckpointFormatError, CkptReader, CkptWriter, SafetensorsReader,
                                    SafetensorsWriter, TensorInfo, detect_format)
from codegeex_ms.checkpoint.dtypes import np_dtype


def _arrays():
    rng = np.random.default_rng(1)
    return {
        "emb.weight": rng.standard_normal((40, 16)).astype(np.float16),  # 1280 B: several 100-B chunks
        "ln.bias": rng.standard_normal(16).astype(np.float32),
        "ids": np.arange(-3, 7, dtype=np.int32),
        "bf": rng.standard_normal((3, 5)).astype(np.float32).astype(np_dtype("bfloat16")),
    }


def _write(writer_class, path, arrays, **kwargs):
    infos = {n: TensorInfo(a.shape, a.dtype.name) for n, a in arrays.items()}
    with open(path, "w+b") as f:
        writer = writer_class(f, infos, **kwargs)
        for name in reversed(list(arrays)):
            writer.write(name, arrays[name])
        writer.close()


def _ms_bits(parameter) -> bytes:
    array = parameter.asnumpy()
    return array.view(np.uint16).tobytes() if parameter.dtype == ms.bfloat16 else array.tobytes()


def _bits(array) -> bytes:
    return array.view(np.uint16).tobytes() if array.dtype == np_dtype("bfloat16") else array.tobytes()


def test_chunked_ckpt_loads_exactly_in_mindspore(tmp_path):
    arrays = _arrays()
    path = tmp_path / "w.ckpt"
    _write(CkptWriter, path, arrays, metadata={"num_attention_heads": "40"}, chunk_bytes=100)
    loaded = ms.load_checkpoint(str(path))
    assert loaded.pop("num_attention_heads") == "40"
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert tuple(loaded[name].shape) == array.shape
        assert _ms_bits(loaded[name]) == _bits(array), name
    assert loaded["bf"].dtype == ms.bfloat16 and loaded["ids"].dtype == ms.int32
    with CkptReader(path) as reader:
        assert reader.metadata == {"num_attention_heads": "40"}
        assert all(_bits(reader.read(n)) == _bits(a) for n, a in arrays.items())


def test_reader_reads_mindspore_save_checkpoint(tmp_path):
    arrays = _arrays()
    path = tmp_path / "ms.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(path),
                       append_dict={"epoch_num": 3, "note": "hello"})
    assert detect_format(path) == "ckpt"
    with CkptReader(path) as reader:
        assert reader.metadata == {"note": "hello"}
        assert set(reader.infos) == set(arrays) | {"epoch_num"}
        assert reader.read("epoch_num").item() == 3
        for name, array in arrays.items():
            assert reader.infos[name] == TensorInfo(array.shape, array.dtype.name)
            assert _bits(reader.read(name)) == _bits(array), name


def test_reader_reads_crc_checked_mindspore_file(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "crc.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(arrays["w"])}], str(path), crc_check=True)
    with CkptReader(path) as reader:
        assert reader.read("w").tobytes() == arrays["w"].tobytes()


def test_safetensors_writer_loads_in_library_and_mindspore(tmp_path):
    arrays = _arrays()
    path = tmp_path / "w.safetensors"
    _write(SafetensorsWriter, path, arrays, metadata={"num_attention_heads": "40", "format": "ms"})
    assert detect_format(path) == "safetensors"
    plain = {n: a for n, a in arrays.items() if n != "bf"}  # safetensors' NumPy API has no bfloat16
    _write(SafetensorsWriter, tmp_path / "plain.safetensors", plain)
    library = load_file(str(tmp_path / "plain.safetensors"))
    assert set(library) == set(plain) and all(library[n].tobytes() == a.tobytes() for n, a in plain.items())
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"num_attention_heads": "40", "format": "ms"}
        assert f.get_tensor("emb.weight").tobytes() == arrays["emb.weight"].tobytes()
    loaded = ms.load_checkpoint(str(path), format="safetensors")
    assert set(loaded) == set(arrays)
    assert all(_ms_bits(loaded[n]) == _bits(a) for n, a in arrays.items())


def test_safetensors_reader_reads_library_and_mindspore_files(tmp_path):
    arrays = _arrays()
    plain = {n: a for n, a in arrays.items() if n != "bf"}
    save_file(plain, str(tmp_path / "lib.safetensors"), metadata={"k": "v"})
    with SafetensorsReader(tmp_path / "lib.safetensors") as reader:
        assert reader.metadata == {"k": "v"} and set(reader.infos) == set(plain)
        assert all(reader.read(n).tobytes() == a.tobytes() for n, a in plain.items())
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()],
                       str(tmp_path / "ms.safetensors"), format="safetensors")
    with SafetensorsReader(tmp_path / "ms.safetensors") as reader:
        assert all(_bits(reader.read(n)) == _bits(a) for n, a in arrays.items())


@pytest.mark.parametrize("writer_class,suffix", [(CkptWriter, ".ckpt"), (SafetensorsWriter, ".safetensors")])
def test_truncated_files_give_clear_errors(tmp_path, writer_class, suffix):
    path = tmp_path / f"w{suffix}"
    _write(writer_class, path, _arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    reader_class = CkptReader if suffix == ".ckpt" else SafetensorsReader
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        reader_class(path)


def test_safetensors_detected_whatever_its_header_length(tmp_path):
    arrays = {"w": np.ones(3, np.float32)}
    for pad in range(64):  # find a header length whose first byte is 0x80, like a pickle's PROTO opcode
        path = tmp_path / f"p{pad}.safetensors"
        _write(SafetensorsWriter, path, arrays, metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert detect_format(path) == "safetensors"
