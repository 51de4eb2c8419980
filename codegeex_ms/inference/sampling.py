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


def _tempered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Float64 probabilities [B, V] after temperature and top-k, before top-p (rows sum to 1)."""
    x = logits.astype(np.float64)
    x /= params.temperature
    if params.top_k and params.top_k < x.shape[-1]:
        kth = np.partition(x, -params.top_k, axis=-1)[:, -params.top_k][:, None]
        x[x < kth] = -np.inf
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Probabilities [B, V] after temperature, top-k and top-p (rows sum to 1)."""
    probs = _tempered_probs(logits, params)
    if params.top_p < 1.0:
        out = np.zeros_like(probs)
        for r in range(probs.shape[0]):
            kept = _nucleus(probs[r], params.top_p)
            out[r, kept] = probs[r, kept]
        probs = out / out.sum(axis=-1, keepdims=True)
    return probs


def sample_rows(logits: np.ndarray, params: SamplingParams, u: np.ndarray) -> np.ndarray:
    """One token per row of ``logits`` [B, V] (padding rows already -inf) sampled under ``params``
    (temperature > 0) with the uniform numbers ``u`` [B] in [0, 1): the first token, in id order,
    at which the cumulative :func:`filtered_probs` of its row reaches ``u[r]``, never a token of
    probability 0. Returns int64 [B].

    The same tokens as that cumulative sum over the whole vocabulary, bit for bit, at a fraction
    of its cost: only the nucleus is summed (the tokens outside it add exact zeros), and its
    renormalising total is summed at full width so its rounding is the same."""
    probs = _tempered_probs(logits, params)
    out = np.empty(probs.shape[0], np.int64)
    scratch = np.zeros(probs.shape[-1])
    for r, row in enumerate(probs):
        if params.top_p < 1.0:
            kept = _nucleus(row, params.top_p)
            vals = row[kept]
            scratch[kept] = vals
            vals = vals / scratch.sum()
            scratch[kept] = 0.0
        else:
            kept, vals = None, row
        j = int(np.searchsorted(np.cumsum(vals), u[r]))    # how many cumulative sums are < u
        if j == vals.size or vals[j] == 0:                 # rounding guard: a token with mass
            j = min(j, int(np.flatnonzero(vals > 0)[-1]))
        out[r] = j if kept is None else kept[j]
    return out


# _nucleus first sorts only the tokens of probability >= each of these (at most 1 / t of them).
_LIKELY = (1e-3, 1e-5)
# Candidates whose cumulative mass reaches top_p + _MASS_MARGIN hold the nucleus whatever the
# rounding (the mass before any later token is at least that mass less a few ulps of 1).
_MASS_MARGIN = 1e-9


def _nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """Indices (ascending) of the smallest set of most likely tokens whose mass reaches ``top_p``
    (the token crossing it included; among equal probabilities the lower ids first).

    Equal to ``order[mass_before < top_p]`` for ``order = argsort(-p, kind="stable")`` and
    ``mass_before = cumsum(p[order]) - p[order]``, computed from ``np.sort`` (much faster than a
    stable argsort): the sorted values are the same numbers in the same order, so the sums and
    the cut are the same bit for bit. Only the tokens of probability >= a threshold are sorted
    when their sorted cumulative mass reaches ``top_p + _MASS_MARGIN``: they are the first
    entries of the full sort (every other token is smaller), so their sums are the full sort's,
    and every later token's mass before it is >= top_p, outside the set. The thresholds tried:
    ``_LIKELY``, then one low enough that the tokens below it weigh less than ``1 - top_p`` less
    the margin (so their complement always qualifies), then (top_p within the margin of 1) all."""
    for threshold in (*_LIKELY, (1.0 - top_p - 2 * _MASS_MARGIN) / p.size):
        if threshold > 0:
            ids = np.flatnonzero(p >= threshold)
            kept = _nucleus_among(p, ids, top_p, complete=False) if ids.size else None
            if kept is not None:
                return kept
    return _nucleus_among(p, np.arange(p.size), top_p, complete=True)


def _nucleus_among(p: np.ndarray, ids: np.ndarray, top_p: float, complete: bool):
    """:func:`_nucleus` of ``p`` from the candidates ``ids`` (ascending), every one more likely
    than any other token; None when they are not ``complete`` and too light to hold it."""
    vals = p[ids]
    desc = np.sort(vals)[::-1]
    mass = np.cumsum(desc)
    if not complete and not mass[-1] >= top_p + _MASS_MARGIN:
        return None
    count = int(np.count_nonzero(mass - desc < top_p))
    cut = desc[count - 1]
    keep = vals > cut
    keep[np.flatnonzero(vals == cut)[:count - int(np.count_nonzero(keep))]] = True
    return ids[keep]


def next_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                real_vocab_size: int) -> np.ndarray:
    """Pick one token per row of ``logits`` [B, V]; returns int32 [B]."""
    logits = mask_padding_rows(logits, real_vocab_size)
    if params.temperature == 0.0:
        return np.argmax(logits, axis=-1).astype(np.int32)
    return sample_rows(logits, params, rng.random(logits.shape[0])).astype(np.int32)
