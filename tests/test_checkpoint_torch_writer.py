"""Writing PyTorch zip checkpoints without torch: readable by our reader and by torch.load."""

import struct
import zipfile

import numpy as np
import pytest

from codegeex_ms.checkpoint import ModelSizes, TensorInfo, TorchZipReader, TorchZipWriter, release_layout, \
    save_weights
from codegeex_ms.checkpoint.dtypes import np_dtype


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float16),
        "a.bias": rng.standard_normal(5).astype(np.float32),
        "t.layers.0.x": np.arange(-4, 4, dtype=np.int64),
        "bf": rng.standard_normal((4, 2)).astype(np.float32).astype(np_dtype("bfloat16")),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float16),
        "mask": np.array([True, False, True]),
    }


_PATHS = {"a.weight": ("module", "a", "weight"), "a.bias": ("module", "a", "bias"),
          "t.layers.0.x": ("module", "t", "layers.0.x"), "bf": ("bf",), "scalar": ("scalar",),
          "empty": ("module", "empty"), "mask": ("mask",)}


def _write(path, arrays, order=None):
    infos = {n: TensorInfo(a.shape, a.dtype.name) for n, a in arrays.items()}
    with open(path, "w+b") as f:
        writer = TorchZipWriter(f, infos, _PATHS)
        for name in order or arrays:
            writer.write(name, arrays[name])
        writer.close()


def test_round_trip_through_own_reader(tmp_path):
    arrays = _arrays()
    path = tmp_path / "w.pt"
    _write(path, arrays, order=list(reversed(arrays)))  # any write order
    with TorchZipReader(path) as reader:
        assert sorted(reader.infos) == sorted(".".join(_PATHS[n]) for n in arrays)
        for name, array in arrays.items():
            got = reader.read(".".join(_PATHS[name]))
            assert got.dtype == array.dtype and got.shape == array.shape
            assert got.tobytes() == array.tobytes(), name


def test_torch_load_weights_only_accepts_it(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: cannot check torch.load compatibility")
    arrays = _arrays()
    path = tmp_path / "w.pt"
    _write(path, arrays)
    for mmap in (False, True):
        state = torch.load(path, weights_only=True, mmap=mmap)
        assert set(state) == {"module", "bf", "scalar", "mask"}
        assert set(state["module"]) == {"a", "t", "empty"} and set(state["module"]["t"]) == {"layers.0.x"}
        for name, array in arrays.items():
            node = state
            for key in _PATHS[name]:
                node = node[key]
            assert tuple(node.shape) == array.shape and node.is_contiguous()
            if name == "bf":
                assert node.dtype == torch.bfloat16
                assert node.view(torch.int16).numpy().tobytes() == array.view(np.uint16).tobytes()
            else:
                assert node.numpy().dtype == array.dtype and node.numpy().tobytes() == array.tobytes(), name


def test_zip_layout_is_torch_like(tmp_path):
    path = tmp_path / "w.pt"
    _write(path, _arrays())
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[0] == "archive/data.pkl" and names[-1] == "archive/version"
        assert set(names) == {"archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                              "archive/byteorder", "archive/version"} | {f"archive/data/{i}" for i in range(7)}
        assert zf.read("archive/byteorder") == b"little" and zf.read("archive/version") == b"3\n"
        assert zf.testzip() is None  # CRCs are right
        raw = path.read_bytes()
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_release_nesting_matches_the_fixture(golden, tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: cannot compare nestings with torch.load")
    layout = release_layout(ModelSizes(1024, 64, 256, 2, 64))
    path = tmp_path / "zeros.pt"
    save_weights(path, {n: np.zeros(s, np.float16) for n, s in layout.items()})

    def structure(node):
        return {k: structure(v) for k, v in node.items()} if isinstance(node, dict) else tuple(node.shape)

    assert structure(torch.load(path, weights_only=True)) == structure(torch.load(golden["pt"], weights_only=True))


def test_wrong_or_missing_tensors_are_refused(tmp_path):
    arrays = _arrays()
    infos = {n: TensorInfo(a.shape, a.dtype.name) for n, a in arrays.items()}
    with open(tmp_path / "w.pt", "w+b") as f:
        writer = TorchZipWriter(f, infos, _PATHS)
        with pytest.raises(ValueError, match="planned"):
            writer.write("a.weight", arrays["a.weight"].astype(np.float32))
        writer.write("a.weight", arrays["a.weight"])
        with pytest.raises(ValueError, match="already written"):
            writer.write("a.weight", arrays["a.weight"])
        with pytest.raises(ValueError, match="not written"):
            writer.close()
        writer.abort()
