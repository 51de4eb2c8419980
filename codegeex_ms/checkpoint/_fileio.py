"""Exact positioned reads into preallocated arrays (no intermediate bytes objects)."""

import numpy as np

from .errors import CheckpointFormatError


def byte_view(array: np.ndarray) -> memoryview:
    """Writable/readable flat uint8 memoryview over a C-contiguous ``array`` (any dtype, incl. bfloat16)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def read_into(f, offset: int, out: memoryview, what: str) -> None:
    """Fill ``out`` with the bytes of binary file ``f`` starting at ``offset``.

    Raises CheckpointFormatError naming ``what`` if the file ends early (truncated file).
    """
    f.seek(offset)
    done = 0
    while done < len(out):
        n = f.readinto(out[done:])
        if not n:
            raise CheckpointFormatError(
                f"{what}: unexpected end of file after {done} of {len(out)} bytes at offset {offset} "
                f"(the file is truncated or corrupt; re-download or re-create it).")
        done += n
