"""MindSpore ``.ckpt`` files, read and written one tensor at a time.

A ``.ckpt`` is the protobuf message ``Checkpoint { repeated Value value = 1; }`` with
``Value { string tag = 1; TensorProto tensor = 2; }`` and
``TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }``.
A serialized repeated field is the concatenation of its elements, and MindSpore itself writes one
``Checkpoint`` message per tensor chunk (``save_checkpoint`` splits big tensors into chunks with
the same tag, which ``load_checkpoint`` joins). The writer does the same with MindSpore's own
message class, so memory holds one chunk of one tensor. The protobuf library can only parse a
whole message in memory, so the reader walks the wire format itself (varints and lengths only)
and records where each tensor's bytes lie, skipping over them until a tensor is read.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import numpy as np

from . import dtypes
from ._fileio import byte_view, read_into
from .base import ClosingContext, TensorInfo
from .errors import CheckpointFormatError

DEFAULT_CHUNK_BYTES = 64 << 20
_CRC_TRAILER = b"crc_num"  # save_checkpoint(crc_check=True) appends b"crc_num" + 10 bytes
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass
class _Entry:
    dims: Tuple[int, ...]
    tensor_type: str
    segments: List[Tuple[int, int]] = field(default_factory=list)  # (offset, length) in the file


class CkptReader(ClosingContext):
    """Index of a MindSpore ``.ckpt``; ``read(name)`` loads one tensor.

    String entries (``tensor_type == "str"``, e.g. from ``append_dict``) go to ``metadata``.
    Encrypted checkpoints and map tensors are not supported.
    """

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "rb")  # pylint: disable=consider-using-with
        try:
            entries = self._index()
            self.metadata: Dict[str, str] = {}
            self._entries: Dict[str, _Entry] = {}
            for tag, entry in entries.items():
                if entry.tensor_type == "str":
                    self.metadata[tag] = self._read_str(entry)
                else:
                    self._entries[tag] = self._checked(tag, entry)
        except BaseException:
            self._file.close()
            raise
        self.infos = {tag: TensorInfo(e.dims, dtypes.CKPT_TYPE_TO_NAME[e.tensor_type])
                      for tag, e in self._entries.items()}

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new C-contiguous array of its stored dtype."""
        entry = self._entries[name]
        out = np.empty(self.infos[name].shape, dtypes.np_dtype(self.infos[name].dtype))
        view, pos = byte_view(out), 0
        for offset, length in entry.segments:
            read_into(self._file, offset, view[pos:pos + length], f"{self.path}: tensor '{name}'")
            pos += length
        return out

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def _index(self) -> Dict[str, _Entry]:
        size = os.fstat(self._file.fileno()).st_size
        end = size
        if size >= 17:
            self._file.seek(size - 17)
            if self._file.read(7) == _CRC_TRAILER:
                end = size - 17
        entries: Dict[str, _Entry] = {}
        previous = None
        for number, wire, offset, value in self._fields(0, end):
            if number != 1 or wire != _LEN:
                raise self._corrupt(f"unexpected field {number} (wire type {wire}) at offset {offset}")
            tag, entry = self._value(value, offset)
            if tag in entries and tag != previous:
                raise self._corrupt(f"tensor '{tag}' appears twice, not in consecutive chunks")
            if tag in entries:
                if (entries[tag].dims, entries[tag].tensor_type) != (entry.dims, entry.tensor_type):
                    raise self._corrupt(f"chunks of tensor '{tag}' disagree on shape or type")
                entries[tag].segments += entry.segments
            else:
                entries[tag] = entry
            previous = tag
        if not entries and size:
            raise self._corrupt("no tensors found")
        return entries

    def _value(self, length: int, offset: int) -> Tuple[str, _Entry]:
        tag, entry = None, None
        for number, wire, start, value in self._fields(offset, offset + length):
            if number == 1 and wire == _LEN:
                tag = self._bytes(start, value).decode("utf-8", "replace")
            elif number == 2 and wire == _LEN:
                entry = self._tensor(start, value)
            elif number == 3:
                raise CheckpointFormatError(f"{self.path}: map tensors (tag {tag!r}) are not supported.")
        if tag is None or entry is None:
            raise self._corrupt(f"a value at offset {offset} lacks its tag or tensor")
        return tag, entry

    def _tensor(self, offset: int, length: int) -> _Entry:
        dims, tensor_type, segments = [], None, []
        for number, wire, start, value in self._fields(offset, offset + length):
            if number == 1 and wire == _VARINT:
                dims.append(value - (1 << 64) if value >= 1 << 63 else value)
            elif number == 1 and wire == _LEN:  # packed encoding
                dims += _decode_varints(self._bytes(start, value))
            elif number == 2 and wire == _LEN:
                tensor_type = self._bytes(start, value).decode("ascii", "replace")
            elif number == 3 and wire == _LEN:
                segments.append((start, value))
        if tensor_type is None:
            raise self._corrupt(f"a tensor at offset {offset} has no type")
        return _Entry(tuple(dims), tensor_type, segments)

    def _fields(self, start: int, end: int):
        """Yield ``(field number, wire type, offset of payload, value or payload length)``."""
        pos = start
        while pos < end:
            key, pos = self._varint(pos, end)
            number, wire = key >> 3, key & 7
            if wire == _VARINT:
                value, new_pos = self._varint(pos, end)
            elif wire == _LEN:
                value, payload = self._varint(pos, end)
                pos, new_pos = payload, payload + value
            elif wire in (_FIXED64, _FIXED32):
                value, new_pos = None, pos + (8 if wire == _FIXED64 else 4)
            else:
                raise self._corrupt(f"unsupported protobuf wire type {wire} at offset {pos}")
            if new_pos > end:
                raise self._corrupt(f"a field at offset {pos} runs past its end (truncated file?)")
            yield number, wire, pos, value
            pos = new_pos

    def _varint(self, pos: int, end: int) -> Tuple[int, int]:
        self._file.seek(pos)
        value, shift = 0, 0
        while True:
            byte = self._file.read(1) if pos < end else b""
            if not byte or shift > 63:
                raise self._corrupt(f"bad or truncated varint at offset {pos}")
            value |= (byte[0] & 0x7F) << shift
            shift += 7
            pos += 1
            if byte[0] < 0x80:
                return value, pos

    def _bytes(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        read_into(self._file, offset, memoryview(out), self.path)
        return bytes(out)

    def _read_str(self, entry: _Entry) -> str:
        raw = b"".join(self._bytes(o, n) for o, n in entry.segments)
        return str(np.frombuffer(raw, f"<U{len(raw) // 4}")[0]) if raw else ""

    def _checked(self, tag: str, entry: _Entry) -> _Entry:
        if entry.tensor_type not in dtypes.CKPT_TYPE_TO_NAME:
            raise CheckpointFormatError(f"{self.path}: tensor '{tag}' has unsupported type {entry.tensor_type!r}.")
        expected = int(np.prod(entry.dims, dtype=np.int64)) * dtypes.itemsize(
            dtypes.CKPT_TYPE_TO_NAME[entry.tensor_type])
        if sum(n for _, n in entry.segments) != expected:
            raise self._corrupt(f"tensor '{tag}' has {sum(n for _, n in entry.segments)} bytes, "
                                f"expected {expected} for shape {entry.dims}")
        return entry

    def _corrupt(self, detail: str) -> CheckpointFormatError:
        return CheckpointFormatError(
            f"{self.path} is not a readable MindSpore checkpoint: {detail}. The file is truncated or "
            f"corrupt (encrypted checkpoints are not supported).")


def _decode_varints(data: bytes) -> List[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(value)
            value, shift = 0, 0
    return values


class CkptWriter:
    """Streams tensors into a MindSpore ``.ckpt`` on binary file ``f``, chunk by chunk.

    ``metadata`` entries are stored as MindSpore string values (as ``save_checkpoint``'s
    ``append_dict`` does) when closing; ``mindspore.load_checkpoint`` returns them as ``str``.
    """

    def __init__(self, f, infos: Mapping[str, TensorInfo], metadata: Mapping[str, str] = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        from mindspore.train.checkpoint_pb2 import Checkpoint  # pylint: disable=import-outside-toplevel
        self._message = Checkpoint
        self._f = f
        self._infos = dict(infos)
        self._pending = set(self._infos)
        self._metadata = dict(metadata or {})
        self._chunk = chunk_bytes

    def write(self, name: str, array: np.ndarray) -> None:
        """Append tensor ``name`` (planned shape and dtype)."""
        info = TensorInfo(tuple(array.shape), dtypes.dtype_name(array.dtype))
        if name not in self._pending or info != self._infos[name]:
            raise ValueError(f"tensor '{name}' ({info}) is not planned or was already written")
        data = byte_view(np.ascontiguousarray(array))
        for start in range(0, max(len(data), 1), self._chunk):
            self._put(name, list(info.shape), dtypes.ckpt_type(info.dtype), data[start:start + self._chunk])
        self._pending.discard(name)

    def close(self) -> None:
        """Append the metadata strings; every planned tensor must have been written."""
        if self._pending:
            raise ValueError(f"{len(self._pending)} planned tensors were not written, "
                             f"e.g. {sorted(self._pending)[:3]}")
        for key, value in self._metadata.items():
            self._put(key, [0], "str", np.array(str(value)).tobytes())

    def abort(self) -> None:
        """Nothing to release after a failure (the caller discards the file)."""

    def _put(self, tag: str, dims, tensor_type: str, content) -> None:
        message = self._message()
        value = message.value.add()
        value.tag = tag
        value.tensor.dims.extend(dims)
        value.tensor.tensor_type = tensor_type
        value.tensor.tensor_content = bytes(content)
        self._f.write(message.SerializeToString())
