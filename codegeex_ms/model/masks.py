"""Host-side (NumPy) attention masks and position ids for plain causal inputs."""

import numpy as np


def causal_mask(batch: int, seq: int) -> np.ndarray:
    """[batch, seq, seq] float32 lower-triangular mask (1 = may attend)."""
    return np.broadcast_to(np.tril(np.ones((seq, seq), np.float32)), (batch, seq, seq)).copy()


def positions(batch: int, seq: int) -> np.ndarray:
    """[batch, seq] int32 position ids 0..seq-1."""
    return np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
