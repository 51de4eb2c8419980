"""What every checkpoint reader provides."""

from dataclasses import dataclass
from typing import Dict, Protocol, Tuple

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype name (see ``dtypes``) of one stored tensor."""

    shape: Tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


class CheckpointReader(Protocol):
    """Random access to the tensors of one file, one tensor in memory at a time.

    ``infos`` maps stored names to TensorInfo in file order; ``metadata`` holds string
    metadata (may be empty); ``read(name)`` returns a new C-contiguous array.
    """

    path: str
    infos: Dict[str, TensorInfo]
    metadata: Dict[str, str]

    def read(self, name: str) -> np.ndarray: ...

    def close(self) -> None: ...


class ClosingContext:
    """``with reader:`` closes the reader at the end; subclasses define ``close()``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
