"""Choosing the next token from FP32 logits on the host (reference section 6).

Order when sampling: temperature, then top-k, then top-p (nucleus), then draw. Vocabulary rows
at or above ``real_vocab_size`` (padding rows) are never chosen.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` means greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_config(cls, inference, temperature=None, top_k=None, top_p=None) -> "SamplingParams":
        """The settings of the ``inference`` config section (``config.InferenceConfig``), each
        replaced by the argument of the same name where that is not None."""
        return cls(inference.temperature if temperature is None else temperature,
                   inference.top_k if top_k is None else top_k, inference.top_p if top_p is None else top_p)


def mask_padding_rows(logits: np.ndarray, real_vocab_size: int) -> np.ndarray:
    """Copy of ``logits`` [B, V] with padding rows (ids >= real_vocab_size) set to -inf."""
    out = np.array(logits, dtype=np.float32, copy=True)
    out[:, real_vocab_size:] = -np.inf
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (rows of -inf stay -inf)."""
    x = logits.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities [B, V] after temperature, top-k and top-p (rows sum to 1)."""
    x = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < x.shape[-1]:
        kth = np.partition(x, -params.top_k, axis=-1)[:, -params.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if params.top_p < 1.0:
        keep = np.zeros(probs.shape, dtype=bool)
        for r in range(probs.shape[0]):
            keep[r, _nucleus(probs[r], params.top_p)] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Indices (ascending) of the smallest set of most likely tokens whose mass reaches ``top_p``
    (the token crossing it included; among equal probabilities the lower ids first).

    Equal to ``order[mass_before < top_p]`` for ``order = argsort(-p, kind="stable")`` and
    ``mass_before = cumsum(p[order]) - p[order]``, computed from ``np.sort`` (much faster than a
    stable argsort): the sorted values are the same numbers in the same order, so the sums and
    the cut are the same bit for bit."""
    desc = np.sort(p)[::-1]
    count = int(np.count_nonzero(np.cumsum(desc) - desc < top_p))
    cut = desc[count - 1]
    keep = p > cut
    keep[np.flatnonzero(p == cut)[:count - int(np.count_nonzero(keep))]] = True
    return np.flatnonzero(keep)


def next_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                real_vocab_size: int) -> np.ndarray:
    """Pick one token per row of ``logits`` [B, V]; returns int32 [B]."""
    logits = mask_padding_rows(logits, real_vocab_size)
    if params.temperature == 0.0:
        return np.argmax(logits, axis=-1).astype(np.int32)
    probs = filtered_probs(logits, params)
    u = rng.random((probs.shape[0], 1))
    picks = (np.cumsum(probs, axis=-1) < u).sum(axis=-1)
    last_allowed = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)  # rounding guard
    return np.minimum(picks, last_allowed).astype(np.int32)
