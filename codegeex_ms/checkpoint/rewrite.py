"""One pipeline for every checkpoint rewrite (``convert``, ``quantize``): refuse to overwrite the
input → open it (any format) → heads (given, else its metadata) → sizes (given, else the shapes) →
release layout → check (every problem at once) → stream each tensor, cast, through a
:class:`Transform` → write atomically (``writers.write_checkpoint``). One tensor at a time in memory.
"""

import dataclasses
import os
from typing import Callable, Dict, NamedTuple, Optional

from . import dtypes
from .base import TensorInfo
from .layout import ModelSizes, check_layout, infer_sizes, release_layout
from .model_sizes import recorded_sizes
from .sources import open_weights
from .writers import write_checkpoint
from ..config import DTYPES


@dataclasses.dataclass(frozen=True)
class Transform:
    """What a rewrite does to the checkpoint it streams; the default copies it unchanged.

    ``refuse(weights)``: raise ValueError if the opened input must not be rewritten (called before
    its layout is checked). ``infos(source)``: the output's ``{name: TensorInfo}`` from the input's
    (release order, dtypes after the cast). ``tensors(pairs)``: the output's ``(name, array)`` pairs
    from the input's, in the order of ``infos``. ``metadata(weights, sizes)``: the output's string
    metadata or None (may raise ValueError: nothing is written yet).
    """
    refuse: Callable = lambda weights: None
    infos: Callable = lambda source: source
    tensors: Callable = lambda pairs: pairs
    metadata: Callable = lambda weights, sizes: None


class Rewritten(NamedTuple):
    """What a rewrite read and wrote: the model sizes, the input's and the output's tensors."""
    sizes: ModelSizes
    inputs: Dict[str, TensorInfo]
    outputs: Dict[str, TensorInfo]


def rewrite_checkpoint(input_path, output_path, fmt: str, transform: Transform = Transform(),
                       dtype: Optional[str] = None, from_ms17: Optional[bool] = None,
                       num_heads: Optional[int] = None, sizes: Optional[ModelSizes] = None,
                       progress: bool = False) -> Rewritten:
    """Rewrite ``input_path`` (release layout, any format) as ``output_path`` in format ``fmt``.

    ``dtype``: cast every input tensor to it (None keeps the stored dtypes). ``from_ms17``: force
    (True) the MindSpore 1.7 names; None detects them. ``sizes``: check the input against these
    (default: infer them from the shapes, with ``num_heads`` or the heads the metadata records).
    Raises ValueError (bad dtype, same file, refused by ``transform``) or LayoutMismatchError.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise ValueError(f"input and output are the same file ({output_path}); choose another output path.")
    with open_weights(input_path, from_ms17) as weights:
        transform.refuse(weights)
        shapes = {name: info.shape for name, info in weights.infos.items()}
        if sizes is None:
            sizes = infer_sizes(shapes, num_heads or recorded_sizes(weights.metadata).get("num_heads"))
        layout = release_layout(sizes)
        check_layout(shapes, layout, what=f"{input_path} (against the model sizes {sizes})")
        source = {name: TensorInfo(shape, dtype or weights.infos[name].dtype) for name, shape in layout.items()}
        outputs, metadata = transform.infos(source), transform.metadata(weights, sizes)

        def pairs():
            for name, info in source.items():
                yield name, weights.read(name).astype(dtypes.np_dtype(info.dtype), copy=False)

        write_checkpoint(output_path, outputs, transform.tensors(pairs()), fmt, metadata, progress)
    return Rewritten(sizes, weights.infos, outputs)
