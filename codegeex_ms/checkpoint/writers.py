"""Writing checkpoints in any supported format, streaming and atomically."""

from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple

import numpy as np
from tqdm import tqdm

from . import dtypes
from .atomic import atomic_output
from .base import TensorInfo
from .layout import release_key_path
from .ms_ckpt import CkptWriter
from .safetensors_io import SafetensorsWriter
from .torch_writer import TorchZipWriter

FORMATS = ("ckpt", "safetensors", "pt")
_EXTENSIONS = {".ckpt": "ckpt", ".safetensors": "safetensors", ".pt": "pt", ".pth": "pt"}


def output_format(path, fmt: Optional[str] = None) -> str:
    """The format to write ``path`` in: ``fmt`` if given, else from the extension.

    Raises ValueError if neither decides, or if ``fmt`` contradicts a known extension.
    """
    by_extension = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if fmt and by_extension and fmt != by_extension:
        raise ValueError(f"output {path} has the extension of the {by_extension} format but "
                         f"format {fmt!r} was requested; make them agree.")
    if not (fmt or by_extension):
        raise ValueError(f"cannot tell the output format of {path}: use the extension .ckpt, "
                         f".safetensors or .pt, or pass the format explicitly.")
    return fmt or by_extension


def open_writer(fmt: str, f, infos: Mapping[str, TensorInfo], metadata: Optional[Mapping[str, str]] = None):
    """Writer for ``infos`` on binary file ``f``; ``.pt`` gets the release's nesting (no metadata)."""
    if fmt == "pt":
        return TorchZipWriter(f, infos, {name: release_key_path(name) for name in infos})
    if fmt == "ckpt":
        return CkptWriter(f, infos, metadata)
    if fmt == "safetensors":
        return SafetensorsWriter(f, infos, metadata)
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}.")


def write_checkpoint(path, infos: Mapping[str, TensorInfo], tensors: Iterable[Tuple[str, np.ndarray]],
                     fmt: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None,
                     progress: bool = False) -> None:
    """Write the tensors planned in ``infos``, pulled one at a time from ``tensors``, to ``path``.

    ``path`` appears only once everything is written (see ``atomic_output``). ``progress`` shows a
    tqdm bar in bytes.
    """
    fmt = output_format(path, fmt)
    total = sum(i.numel * dtypes.itemsize(i.dtype) for i in infos.values())
    with atomic_output(path) as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                        desc=f"writing {Path(path).name}", disable=not progress) as bar:
        writer = open_writer(fmt, f, infos, metadata)
        try:
            for name, array in tensors:
                writer.write(name, array)
                bar.update(array.nbytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise


def save_weights(path, tensors: Mapping[str, np.ndarray], fmt: Optional[str] = None,
                 metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write an in-memory name -> array mapping (model naming) to ``path``."""
    infos = {n: TensorInfo(tuple(a.shape), dtypes.dtype_name(a.dtype)) for n, a in tensors.items()}
    write_checkpoint(path, infos, tensors.items(), fmt, metadata)
