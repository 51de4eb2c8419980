"""Opening any supported checkpoint and viewing it under the model's parameter names."""

import logging
import os
import struct
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from .atomic import verify_file
from .base import CheckpointReader, ClosingContext, TensorInfo
from .errors import CheckpointFormatError
from .ms17 import OPTIMIZER_PREFIXES, map_ms17_names
from .ms_ckpt import CkptReader
from .safetensors_io import SafetensorsReader
from .torch_reader import TorchZipReader

logger = logging.getLogger(__name__)

_READERS = {"pt": TorchZipReader, "ckpt": CkptReader, "safetensors": SafetensorsReader}


def detect_format(path) -> str:
    """"pt", "ckpt" or "safetensors", from the file's first bytes (extensions are not trusted)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist.")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pt"  # zip, or a legacy torch pickle (the reader explains what to do)
    if head[:1] == b"\x0a":
        return "ckpt"
    raise CheckpointFormatError(
        f"{path}: unrecognised checkpoint format (header {head!r}); supported are PyTorch zip "
        f"(.pt, torch.save), MindSpore .ckpt and .safetensors.")


def open_checkpoint(path) -> CheckpointReader:
    """A reader for ``path`` with its stored names, whatever the format.

    A file this project wrote is first checked against its manifest (see ``atomic``); damage
    raises :class:`~codegeex_ms.checkpoint.atomic.IntegrityError` before any parsing.
    """
    fmt = detect_format(path)
    verify_file(path, required=False)
    return _READERS[fmt](path)


class ModelWeights(ClosingContext):
    """A checkpoint's tensors under the model's parameter names (see ``layout``), one at a time.

    Release ``.pt`` names lose their ``module.`` prefix; MindSpore 1.7 names (auto-detected from a
    ``backbone.`` name, or forced with ``from_ms17=True``) are renamed and transposed (see
    ``ms17``), their training state dropped with a logged notice. ``infos``: name -> TensorInfo
    (shapes after transposition); ``read(name)``: C-contiguous array in the stored dtype.
    """

    def __init__(self, reader: CheckpointReader, from_ms17: Optional[bool] = None):
        self.reader = reader
        self.path = reader.path
        self.metadata = reader.metadata
        names = list(reader.infos)
        if from_ms17 is None:
            from_ms17 = any(n.startswith("backbone.") for n in names)
        if from_ms17:
            self._sources, dropped = map_ms17_names(names)
            _log_dropped(self.path, dropped)
        else:
            prefix = "module." if names and all(n.startswith("module.") for n in names) else ""
            self._sources = {n[len(prefix):]: (n, False) for n in names}
        self.infos: Dict[str, TensorInfo] = {}
        for name, (source, transpose) in self._sources.items():
            info = reader.infos[source]
            self.infos[name] = TensorInfo(info.shape[::-1], info.dtype) if transpose else info

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` (model naming)."""
        source, transpose = self._sources[name]
        array = self.reader.read(source)
        return np.ascontiguousarray(array.T) if transpose else array

    def close(self) -> None:
        """Release the file."""
        self.reader.close()


def open_weights(path, from_ms17: Optional[bool] = None) -> ModelWeights:
    """Open any supported checkpoint under the model's parameter names."""
    return ModelWeights(open_checkpoint(path), from_ms17)


def load_weights(path, from_ms17: Optional[bool] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(parameter name, array)`` for every tensor of ``path`` in file order, one at a time.

    Formats: PyTorch zip ``.pt`` (release layout), MindSpore ``.ckpt``, ``.safetensors``;
    MindSpore 1.7 names are converted (see ModelWeights). Arrays keep the stored dtype.
    """
    with open_weights(path, from_ms17) as weights:
        for name in weights.infos:
            yield name, weights.read(name)


def _log_dropped(path, dropped) -> None:
    moments = [n for n in dropped if n.startswith(OPTIMIZER_PREFIXES)]
    others = [n for n in dropped if not n.startswith(OPTIMIZER_PREFIXES)]
    if moments:
        logger.warning("%s: ignoring %d optimizer moment tensors (adam_m./adam_v.).", path, len(moments))
    if others:
        shown = ", ".join(others[:8]) + (", ..." if len(others) > 8 else "")
        logger.warning("%s: ignoring %d training-state entries outside backbone.: %s", path, len(others), shown)
