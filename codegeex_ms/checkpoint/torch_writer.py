"""Writer of PyTorch zip-format checkpoints without torch, one tensor in memory at a time.

The layout follows what torch 2.x ``torch.save`` writes: ``archive/data.pkl`` (pickle protocol 2,
tensors as ``torch._utils._rebuild_tensor_v2`` over persistent storage ids), ``.format_version``,
``.storage_alignment``, ``byteorder``, one uncompressed member ``archive/data/<key>`` per tensor,
its data aligned to 64 bytes, and ``version``. The pickle is written first (shapes and dtypes are
known up front), then the tensors are streamed in any order.
"""

import collections
import io
import pickle
import struct
import zipfile
from typing import Dict, Mapping, Tuple

import numpy as np

from . import dtypes
from ._fileio import byte_view
from .base import TensorInfo

_ARCHIVE = "archive/"
_ALIGNMENT = 64
_PAD_FIELD_ID = 0x4246  # "FB": the extra field torch uses to pad local headers
_ZIP64_LOCAL_EXTRA = 20  # zip64 extra field that zipfile adds to a local header


class _Global:
    """A global of the torch namespace, written into the pickle by name (never imported)."""

    _cache: Dict[Tuple[str, str], "_Global"] = {}

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @classmethod
    def get(cls, module: str, name: str) -> "_Global":
        """One shared instance per name, so the pickle memoizes it."""
        return cls._cache.setdefault((module, name), cls(module, name))

    def __call__(self, *args):
        """Only the pickle's reader calls it; pickle requires a reduce function to be callable."""
        raise TypeError(f"{self.module}.{self.name} is a placeholder for writing pickles")


class _Storage:
    def __init__(self, key: str, info: TensorInfo):
        self.key, self.info = key, info


class _Tensor:
    """Pickles as torch's ``_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        shape = tuple(int(n) for n in self.storage.info.shape)  # plain ints: numpy ints would pickle as globals
        stride = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
        return (_Global.get("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, shape, stride, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
    """Pure-Python pickler (its dispatch table can be extended) that emits torch globals by name."""

    dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_class = _Global.get("torch", dtypes.torch_storage_class(obj.info.dtype))
            return ("storage", storage_class, obj.key, "cpu", obj.info.numel)
        return None

    def _save_global_by_name(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = _save_global_by_name


class TorchZipWriter:
    """Streams tensors into a ``torch.save``-compatible zip opened on binary file ``f`` (seekable).

    ``paths`` maps each tensor name to its key path in the nested dict, e.g.
    ``("module", "language_model", "embedding", "word_embeddings", "weight")``; ``infos`` gives
    shapes/dtypes. Call ``write(name, array)`` once per tensor (any order), then ``close()``.
    """

    def __init__(self, f, infos: Mapping[str, TensorInfo], paths: Mapping[str, Tuple[str, ...]]):
        self._f = f
        self._zip = zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._storages = {name: _Storage(str(i), info) for i, (name, info) in enumerate(infos.items())}
        self._pending = set(self._storages)
        tree: dict = {}
        for name, storage in self._storages.items():
            *parents, leaf = paths[name]
            node = tree
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = _Tensor(storage)
        buf = io.BytesIO()
        _TorchPickler(buf, protocol=2).dump(tree)
        self._member("data.pkl", buf.getvalue())
        self._member(".format_version", b"1")
        self._member(".storage_alignment", str(_ALIGNMENT).encode())
        self._member("byteorder", b"little")

    def write(self, name: str, array: np.ndarray) -> None:
        """Store tensor ``name``; ``array`` must have the planned shape and dtype."""
        storage = self._storages[name]
        if name not in self._pending:
            raise ValueError(f"tensor '{name}' was already written")
        info = TensorInfo(tuple(array.shape), dtypes.dtype_name(array.dtype))
        if info != storage.info:
            raise ValueError(f"tensor '{name}': got {info}, planned {storage.info}")
        self._member(f"data/{storage.key}", byte_view(np.ascontiguousarray(array)))
        self._pending.discard(name)

    def close(self) -> None:
        """Write the trailing records and the zip directory; every planned tensor must be written."""
        if self._pending:
            raise ValueError(f"{len(self._pending)} planned tensors were not written, "
                             f"e.g. {sorted(self._pending)[:3]}")
        self._member("version", b"3\n")
        self._zip.close()

    def abort(self) -> None:
        """Close the zip after a failure (the caller discards the file)."""
        try:
            self._zip.close()
        except (OSError, ValueError):
            pass

    def _member(self, name: str, data) -> None:
        size = len(data)
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # the rule zipfile applies itself
        info = zipfile.ZipInfo(_ARCHIVE + name)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        header_end = (self._f.tell() + 30 + len(info.filename.encode()) + 4
                      + (_ZIP64_LOCAL_EXTRA if zip64 else 0))
        pad = -header_end % _ALIGNMENT
        info.extra = struct.pack("<HH", _PAD_FIELD_ID, pad) + b"Z" * pad
        with self._zip.open(info, "w", force_zip64=zip64) as out:
            if self._f.tell() % _ALIGNMENT:
                raise RuntimeError(f"zip member {info.filename} is not {_ALIGNMENT}-byte aligned")
            out.write(data)
