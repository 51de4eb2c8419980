"""Position ids, attention mask and loss mask of a packed token row, with EOD reset (NumPy only).

Convention (reference section 4, as in the original PanGu-alpha/CodeGeeX code): an EOD token
belongs to the document it terminates. With EOD reset, position ids restart at 0 on the token
*after* each EOD, and a token attends (causally) only to tokens of its own document, so nothing
after an EOD sees the EOD or anything before it. Without reset the mask is plain causal and
positions run 0..S-1. In both modes the loss mask is 0 where the input token is EOD (this also
covers EOD padding) and 1 elsewhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def _causal(size: int) -> np.ndarray:
    tri = np.tri(size, dtype=np.uint8)
    tri.flags.writeable = False
    return tri


def causal_mask(batch: int, seq: int) -> np.ndarray:
    """[batch, seq, seq] float32 plain causal mask (1 = may attend): rows without EOD reset."""
    return np.broadcast_to(_causal(seq).astype(np.float32), (batch, seq, seq)).copy()


def positions(batch: int, seq: int) -> np.ndarray:
    """[batch, seq] int32 position ids 0..seq-1."""
    return np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()


def document_starts(tokens: np.ndarray, eod_id: int) -> np.ndarray:
    """Start index of every document in the 1-D row ``tokens`` (0, and each index after an EOD)."""
    return np.concatenate([[0], np.flatnonzero(tokens[:-1] == eod_id) + 1])


def _fill_row(tokens: np.ndarray, eod_id: int, position_ids: np.ndarray,
              attention_mask: np.ndarray) -> None:
    """Write one row's EOD-reset positions and block-diagonal causal mask. Every mask byte is
    written once (no zeroing pass first): about 3x faster for [16, 2048, 2048] on this machine."""
    size = tokens.shape[0]
    bounds = np.append(document_starts(tokens, eod_id), size)
    lengths = np.diff(bounds)
    position_ids[:] = np.arange(size) - np.repeat(bounds[:-1], lengths)
    causal = _causal(size)
    for start, end in zip(bounds[:-1], bounds[1:]):
        rows = attention_mask[start:end]
        rows[:, :start] = 0
        rows[:, start:end] = causal[:end - start, :end - start]
        rows[:, end:] = 0


def eod_reset_masks(tokens, eod_id: int, eod_reset: bool = True):
    """Masks for input ids ``tokens`` of shape [S] or [B, S].

    Returns ``(position_ids int32 [..., S], attention_mask uint8 [..., S, S], loss_mask float32
    [..., S])``; ``attention_mask[i, j] = 1`` when query ``i`` may attend to key ``j``.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [S] or [B, S], got {tokens.shape}")
    rows = tokens.reshape(-1, tokens.shape[-1])
    size = rows.shape[1]
    loss_mask = (rows != eod_id).astype(np.float32)
    if eod_reset:
        position_ids = np.empty(rows.shape, dtype=np.int32)
        attention_mask = np.empty((rows.shape[0], size, size), dtype=np.uint8)
        for row, pos, mask in zip(rows, position_ids, attention_mask):
            _fill_row(row, eod_id, pos, mask)
    else:
        position_ids = np.broadcast_to(np.arange(size, dtype=np.int32), rows.shape).copy()
        attention_mask = np.broadcast_to(_causal(size), (rows.shape[0], size, size)).copy()
    outputs = (position_ids, attention_mask, loss_mask)
    return tuple(o[0] for o in outputs) if tokens.ndim == 1 else outputs
