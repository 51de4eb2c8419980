"""safetensors files, read and written one tensor at a time.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a
JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
padded with spaces to a multiple of 8 bytes, then the tensors' bytes back to back. The
``safetensors`` library writes a file only from tensors that are all in memory, and its NumPy
reader cannot return BF16; since shapes are known up front, the writer here writes the header
first and then each tensor at its offset, and the reader reads the header itself.
"""

import json
import os
import struct
from typing import Dict, Mapping

import numpy as np

from . import dtypes
from ._fileio import byte_view, read_into
from .base import ClosingContext, TensorInfo
from .errors import CheckpointFormatError

_MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
_METADATA = "__metadata__"


class SafetensorsReader(ClosingContext):
    """Index of a safetensors file; ``read(name)`` loads one tensor (BF16 included)."""

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "rb")  # pylint: disable=consider-using-with
        try:
            self._parse_header()
        except BaseException:
            self._file.close()
            raise

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new C-contiguous array of its stored dtype."""
        info = self.infos[name]
        out = np.empty(info.shape, dtypes.np_dtype(info.dtype))
        read_into(self._file, self._data_start + self._offsets[name], byte_view(out),
                  f"{self.path}: tensor '{name}'")
        return out

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def _parse_header(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < length <= min(_MAX_HEADER_BYTES, size - 8):
            raise self._bad(f"header length {length} does not fit a file of {size} bytes")
        try:
            header = json.loads(self._file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._bad(f"the JSON header is invalid ({err})") from err
        if not isinstance(header, dict):
            raise self._bad("the JSON header is not an object")
        self.metadata: Dict[str, str] = dict(header.pop(_METADATA, None) or {})
        self._data_start = 8 + length
        spans, self._offsets, infos = [], {}, {}
        for name, desc in header.items():
            try:
                dtype = dtypes.SAFETENSORS_TO_NAME[desc["dtype"]]
                shape = tuple(int(n) for n in desc["shape"])
                begin, end = (int(n) for n in desc["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise self._bad(f"entry '{name}' is malformed or of an unsupported dtype ({desc!r})") from err
            info = TensorInfo(shape, dtype)
            if end - begin != info.numel * dtypes.itemsize(dtype):
                raise self._bad(f"entry '{name}' spans {end - begin} bytes, its shape needs "
                                f"{info.numel * dtypes.itemsize(dtype)}")
            spans.append((begin, end, name))
            self._offsets[name], infos[name] = begin, info
        spans.sort()
        position = 0
        for begin, end, name in spans:
            if begin != position:
                raise self._bad(f"entry '{name}' does not start where the previous one ends")
            position = end
        if self._data_start + position != size:
            raise self._bad(f"the header describes {position} data bytes, the file holds "
                            f"{size - self._data_start} (truncated file?)")
        self.infos = {name: infos[name] for _, _, name in spans}

    def _bad(self, detail: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{self.path} is not a valid safetensors file: {detail}. "
                                     f"The file is truncated or corrupt.")


class SafetensorsWriter:
    """Writes the header for ``infos`` (data in that order) on seekable file ``f``, then tensors."""

    def __init__(self, f, infos: Mapping[str, TensorInfo], metadata: Mapping[str, str] = None):
        self._f = f
        self._infos = dict(infos)
        self._pending = set(self._infos)
        header, self._offsets, position = {}, {}, 0
        if metadata:
            header[_METADATA] = {str(k): str(v) for k, v in metadata.items()}
        for name, info in self._infos.items():
            nbytes = info.numel * dtypes.itemsize(info.dtype)
            header[name] = {"dtype": dtypes.safetensors_code(info.dtype), "shape": list(info.shape),
                            "data_offsets": [position, position + nbytes]}
            self._offsets[name] = position
            position += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._start = f.tell()
        self._data_start = self._start + 8 + len(raw)
        self._end = self._data_start + position
        f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write tensor ``name`` (planned shape and dtype) at its offset."""
        info = TensorInfo(tuple(array.shape), dtypes.dtype_name(array.dtype))
        if name not in self._pending or info != self._infos[name]:
            raise ValueError(f"tensor '{name}' ({info}) is not planned or was already written")
        self._f.seek(self._data_start + self._offsets[name])
        self._f.write(byte_view(np.ascontiguousarray(array)))
        self._pending.discard(name)

    def close(self) -> None:
        """Check that every planned tensor was written and leave the file position at its end."""
        if self._pending:
            raise ValueError(f"{len(self._pending)} planned tensors were not written, "
                             f"e.g. {sorted(self._pending)[:3]}")
        self._f.seek(self._end)

    def abort(self) -> None:
        """Nothing to release after a failure (the caller discards the file)."""
