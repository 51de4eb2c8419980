"""Reader of PyTorch zip-format checkpoints (``torch.save``) without torch and without running pickle code.

``data.pkl`` is unpickled by a restricted Unpickler: only the globals needed to describe tensors
are resolved, each to an inert local stand-in (nothing from torch is imported or called); any
other global raises UnsafePickleError before it could be used. Storages become lazy references
to the zip members ``<archive>/data/<key>``, which torch stores uncompressed; a tensor is read
with one positioned read into a fresh array, so memory holds one tensor at a time.
"""

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from . import dtypes
from ._fileio import byte_view, read_into
from .base import ClosingContext, TensorInfo
from .errors import CheckpointFormatError, UnsafePickleError

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIGNATURE = 0x04034B50


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.HalfStorage`` & co. and for ``torch.float16`` & co."""

    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor(_v2): records where the tensor's data lie."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_ignored):
    """Stand-in for torch._utils._rebuild_parameter: a Parameter is read as its tensor."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages become _StorageRef (persistent ids)."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in dtypes.TORCH_STORAGE_TO_NAME:
            return _StorageType(dtypes.TORCH_STORAGE_TO_NAME[name])
        if module == "torch" and name in dtypes.TORCH_DTYPE_TO_NAME:
            return _StorageType(dtypes.TORCH_DTYPE_TO_NAME[name])
        raise UnsafePickleError(self._path, f"{module}.{name}")

    def persistent_load(self, pid):
        if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            return _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4]))
        raise CheckpointFormatError(f"{self._path}: unsupported persistent id {pid!r} in data.pkl")


class TorchZipReader(ClosingContext):
    """Tensors of a ``torch.save`` zip file, nested dicts flattened to dotted names.

    ``infos``: name -> TensorInfo in pickle order; ``metadata``: non-tensor leaves as strings;
    ``read(name)``: a new C-contiguous array (storage offset, size and stride honoured).
    """

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "rb")  # pylint: disable=consider-using-with
        try:
            self._zip = _open_zip(self._file, self.path)
            self._prefix = _archive_prefix(self._zip, self.path)
            self._big_endian = self._read_small("byteorder", b"little") == b"big"
            tree = self._unpickle()
        except BaseException:
            self._file.close()
            raise
        self._refs: Dict[str, _TensorRef] = {}
        self.metadata: Dict[str, str] = {}
        _flatten(tree, "", self._refs, self.metadata)
        self.infos = {n: TensorInfo(r.shape, r.storage.dtype) for n, r in self._refs.items()}

    def read(self, name: str) -> np.ndarray:
        """Materialise tensor ``name`` as a NumPy array of its stored dtype."""
        ref = self._refs[name]
        storage = ref.storage
        what = f"{self.path}: tensor '{name}'"
        dtype = dtypes.np_dtype(storage.dtype)
        item = dtype.itemsize
        member = self._member(f"data/{storage.key}", what)
        if member.file_size != storage.numel * item:
            raise CheckpointFormatError(
                f"{what}: storage {storage.key} holds {member.file_size} bytes, expected "
                f"{storage.numel} x {item}; the file is corrupt.")
        if 0 in ref.shape:
            return np.empty(ref.shape, dtype)
        span = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if ref.offset < 0 or ref.offset + span > storage.numel:
            raise CheckpointFormatError(f"{what}: its view exceeds its storage; the file is corrupt.")
        flat = np.empty(span, dtype)
        read_into(self._file, _data_offset(self._file, member, what) + ref.offset * item,
                  byte_view(flat), what)
        if self._big_endian and item > 1:
            flat.view(f"u{item}").byteswap(inplace=True)
        if ref.stride == _contiguous_strides(ref.shape):
            return flat.reshape(ref.shape)
        view = np.lib.stride_tricks.as_strided(flat, ref.shape, [s * item for s in ref.stride])
        return np.ascontiguousarray(view)

    def close(self) -> None:
        """Release the file."""
        self._zip.close()
        self._file.close()

    def _member(self, name: str, what: str) -> zipfile.ZipInfo:
        try:
            return self._zip.getinfo(self._prefix + name)
        except KeyError:
            raise CheckpointFormatError(f"{what}: zip member '{self._prefix + name}' is missing; "
                                        f"the file is corrupt.") from None

    def _read_small(self, name: str, default: bytes) -> bytes:
        try:
            return self._zip.read(self._prefix + name).strip()
        except KeyError:
            return default

    def _unpickle(self):
        with self._zip.open(self._member("data.pkl", self.path)) as f:
            try:
                return _RestrictedUnpickler(f, self.path).load()
            except (CheckpointFormatError, MemoryError):
                raise
            except Exception as err:  # the pickle stream itself is malformed
                raise CheckpointFormatError(
                    f"{self.path}: data.pkl cannot be unpickled ({type(err).__name__}: {err}); "
                    f"the file is corrupt.") from err


def _open_zip(file, path: str) -> zipfile.ZipFile:
    head = file.read(16)
    file.seek(0)
    if not head.startswith(b"PK"):
        if head[:1] == b"\x80" or _is_tar(file):
            raise CheckpointFormatError(
                f"{path} uses PyTorch's legacy (pre-1.6, non-zip) serialization, which this reader "
                f"does not support. Re-save it with a recent torch: "
                f"torch.save(torch.load(old_path), new_path).")
        raise CheckpointFormatError(f"{path} is not a PyTorch zip checkpoint (unknown file header {head[:8]!r}).")
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointFormatError(
            f"{path} is not a complete zip archive ({err}); the file is truncated or corrupt: "
            f"re-download or re-save it.") from err


def _is_tar(file) -> bool:
    file.seek(257)
    magic = file.read(5)
    file.seek(0)
    return magic == b"ustar"


def _archive_prefix(zf: zipfile.ZipFile, path: str) -> str:
    roots = [n[: -len("data.pkl")] for n in zf.namelist()
             if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise CheckpointFormatError(f"{path}: expected exactly one '<archive>/data.pkl' in the zip, "
                                    f"found {len(roots)}; this is not a torch.save file.")
    return roots[0]


def _data_offset(file, member: zipfile.ZipInfo, what: str) -> int:
    """Byte offset of a stored member's data (its local header is 30 bytes + name + extra)."""
    if member.compress_type != zipfile.ZIP_STORED:
        raise CheckpointFormatError(f"{what}: zip member {member.filename} is compressed; torch.save "
                                    f"stores tensors uncompressed. Re-save the file with torch.save.")
    header = bytearray(_LOCAL_HEADER.size)
    read_into(file, member.header_offset, memoryview(header), what)
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_HEADER_SIGNATURE:
        raise CheckpointFormatError(f"{what}: bad zip local header for {member.filename}; the file is corrupt.")
    return member.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


def _contiguous_strides(shape) -> Tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _flatten(node, name: str, refs: dict, metadata: dict) -> None:
    """Nested dicts -> dotted names; tensors into ``refs``, other leaves into ``metadata`` as strings."""
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{name}.{key}" if name else str(key), refs, metadata)
    elif name in refs or name in metadata:
        raise CheckpointFormatError(f"two entries flatten to the same name '{name}'")
    elif isinstance(node, _TensorRef):
        refs[name] = node
    else:
        metadata[name] = str(node)
