"""Synthetic checkpoints in the exact release layout: deterministic random FP16 weights.

The real CodeGeeX-13B weights are not needed to exercise the 26 GB file handling (writing,
converting, quantizing, loading): a file with the release's names, nesting, shapes and dtype has
the same size, memory and time behaviour. Values are random, finite and non-zero:

- tensor ``i`` (release order) draws from ``numpy.random.SFC64`` seeded with
  ``SeedSequence([seed, i])``, so any tensor can be recomputed alone and the file does not
  depend on chunking;
- each 64-bit draw gives four FP16 values (little-endian 16-bit pieces); a value's bits keep the
  draw's sign bit, the low three exponent bits and the ten mantissa bits, and the exponent's
  two high bits are set to ``01``: magnitudes in [2⁻⁷, 2) — finite and quantizable, cheap
  (two integer operations per value, no floating-point math).

``write_synthetic_release`` streams one tensor at a time (peak memory about the largest tensor,
the 0.53 GB word embedding for 13B) into a ``torch.save``-compatible zip.
"""

from typing import Callable, Optional

import numpy as np

from .base import TensorInfo
from .layout import ModelSizes, release_key_path, release_layout
from .torch_writer import TorchZipWriter
from .atomic import atomic_output

DTYPE = "float16"
_KEEP_BITS = np.uint16(0x9FFF)  # sign, exponent bits 0-2, mantissa
_SET_BITS = np.uint16(0x2000)   # exponent bits 3-4 := 01 -> biased exponent 8..15


def synthetic_tensor(seed: int, index: int, shape) -> np.ndarray:
    """Tensor ``index`` (position in release order) of the synthetic checkpoint for ``seed``:
    a new C-contiguous FP16 array of ``shape``."""
    numel = int(np.prod(shape, dtype=np.int64))
    gen = np.random.SFC64(np.random.SeedSequence([int(seed), int(index)]))
    bits = gen.random_raw((numel + 3) // 4).view("<u2")[:numel]
    np.bitwise_and(bits, _KEEP_BITS, out=bits)
    np.bitwise_or(bits, _SET_BITS, out=bits)
    return bits.view(np.float16).reshape(shape)


def write_synthetic_release(path, sizes: ModelSizes, seed: int = 0,
                            on_tensor: Optional[Callable[[str, int], None]] = None) -> int:
    """Write the release-layout ``.pt`` of ``sizes`` with synthetic FP16 weights to ``path``.

    The file is ``torch.save``'s zip format with the release's nested ``module`` dict (loadable
    by ``torch.load(path, mmap=True, weights_only=True)``); it appears only when complete.
    ``on_tensor(name, nbytes)`` is called after each tensor (progress). Returns the number of
    parameters written.
    """
    layout = release_layout(sizes)
    infos = {name: TensorInfo(tuple(shape), DTYPE) for name, shape in layout.items()}
    total = 0
    with atomic_output(path) as f:
        writer = TorchZipWriter(f, infos, {name: release_key_path(name) for name in infos})
        try:
            for index, (name, shape) in enumerate(layout.items()):
                array = synthetic_tensor(seed, index, shape)
                writer.write(name, array)
                total += array.size
                if on_tensor is not None:
                    on_tensor(name, array.nbytes)
                del array
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return total
