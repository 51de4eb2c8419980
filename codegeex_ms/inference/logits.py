"""Per-row logit processing for the slot scheduler: penalties, log-probabilities, the choice.

Rows of one decode step may belong to different requests with different sampling settings;
:func:`choose` groups rows with equal settings, so greedy rows cost one ``argmax`` together, and
draws each sampled row's uniform number from that row's own generator (so a row's tokens do not
depend on which other rows share its step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codegeex_ms.inference.sampling import SamplingParams, log_softmax, sample_rows


@dataclass(frozen=True)
class Penalties:
    """OpenAI's presence/frequency penalties: ``logit[t] -= presence * (count[t] > 0) +
    frequency * count[t]`` over the tokens generated so far (not the prompt)."""

    presence: float = 0.0
    frequency: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.presence or self.frequency)

    def apply(self, logits: np.ndarray, counts: dict) -> np.ndarray:
        """Penalised copy of one row ``logits`` [V]; ``counts`` maps token id -> times generated."""
        out = np.array(logits, dtype=np.float32, copy=True)
        if counts:
            ids = np.fromiter(counts.keys(), np.int64, len(counts))
            n = np.fromiter(counts.values(), np.float32, len(counts))
            out[ids] -= self.presence + self.frequency * n
        return out


def top_logprobs(logits: np.ndarray, token: int, k: int) -> tuple:
    """(log-probability of ``token``, {id: log-probability} of the ``k`` most likely ids) under
    the log-softmax of one row ``logits`` [V] (padding rows already at -inf)."""
    logp = log_softmax(logits[None, :])[0]
    top = {}
    if k > 0:
        best = np.argpartition(-logp, k - 1)[:k]
        best = best[np.argsort(-logp[best], kind="stable")]
        top = {int(i): float(logp[i]) for i in best}
    return float(logp[token]), top


def choose(logits: np.ndarray, params: list, rngs: list) -> np.ndarray:
    """One token per row of ``logits`` [R, V] (padding rows already -inf) under ``params[r]``
    (a :class:`SamplingParams`), drawing from ``rngs[r]`` (one ``random()`` per sampled row,
    none for greedy rows). Returns int64 [R]."""
    out = np.empty(len(params), np.int64)
    groups = {}
    for r, p in enumerate(params):
        groups.setdefault(SamplingParams() if p.temperature == 0 else p, []).append(r)
    for p, rows in groups.items():
        sub = logits[rows]
        if p.temperature == 0:
            out[rows] = np.argmax(sub, axis=-1)
            continue
        out[rows] = sample_rows(sub, p, np.array([rngs[r].random() for r in rows]))
    return out
