"""Exact speculative decoding with prompt-lookup drafts.

Code continuations often copy what is already in the context (identifiers, a translated
function's structure), so the draft for a row is what followed the latest earlier occurrence of
its last ``n`` tokens (``n = max_ngram .. 1``, prompt and generated tokens alike), up to
``draft_tokens`` tokens. One forward over the slot cache runs every row's pending token plus its
draft (S = draft_tokens + 1) and yields the distribution after each prefix. Draft token ``d`` at
a position whose (processed) distribution is ``p`` is then

* greedy: accepted iff ``argmax p == d``; the first mismatch emits ``argmax p`` instead, so the
  output is token for token that of plain greedy decoding;
* sampled: accepted with probability ``p(d)`` (the standard rule ``min(1, p/q)`` with the
  draft distribution ``q`` a point mass at ``d``), else a token is drawn from ``p`` with ``d``
  removed and renormalised — the residual ``max(p - q, 0)`` — so every emitted token has
  distribution ``p`` exactly (the row's random numbers are consumed differently, so seeded
  samples differ from non-speculative ones while following the same distribution).

After ``a`` accepted drafts the row has emitted ``a + 1`` tokens in one step; the cache entries
of rejected drafts lie beyond the row's length, hidden by the mask until overwritten.
"""

from __future__ import annotations

import numpy as np

from codegeex_ms.inference.logits import choose
from codegeex_ms.inference.sampling import filtered_probs


def propose(context: np.ndarray, draft_tokens: int, max_ngram: int = 3) -> list:
    """The tokens that followed the latest earlier occurrence of ``context``'s last n tokens
    (longest n first, n <= ``max_ngram``), at most ``draft_tokens`` of them; [] if none."""
    size = len(context)
    for n in range(min(max_ngram, size - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(context[:size - 1], n)
        hits = np.flatnonzero((windows == context[size - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return [int(t) for t in context[start:start + draft_tokens]]
    return []


def accept_draft(probs: np.ndarray, draft: int, rng: np.random.Generator) -> int:
    """The token emitted at a position with distribution ``probs`` [V] (rows sum to 1) whose
    draft is ``draft``: ``draft`` with probability ``probs[draft]``, else a draw from the
    residual (``probs`` without ``draft``, renormalised). Uses one or two ``rng.random()``."""
    if rng.random() < probs[draft]:
        return draft
    residual = probs.astype(np.float64, copy=True)
    residual[draft] = 0.0
    total = residual.sum()
    if total <= 0.0:             # probs[draft] was 1 up to rounding
        return draft
    cum = np.cumsum(residual / total)
    pick = int((cum < rng.random()).sum())
    last_allowed = residual.size - 1 - int(np.argmax(residual[::-1] > 0))
    return min(pick, last_allowed)


class PromptLookup:
    """Speculative decoding for a :class:`~codegeex_ms.inference.scheduler.SlotScheduler`
    (its ``speculative=``): drafts of up to ``draft_tokens`` tokens from n-grams of up to
    ``max_ngram`` tokens. Steps where a row is within ``draft_tokens`` positions of the cache's
    end decode plainly."""

    def __init__(self, draft_tokens: int = 4, max_ngram: int = 3):
        if draft_tokens < 1 or max_ngram < 1:
            raise ValueError(f"draft_tokens and max_ngram must be >= 1, got {draft_tokens}, {max_ngram}")
        self.draft_tokens, self.max_ngram = draft_tokens, max_ngram

    def draft(self, context: np.ndarray, limit: int) -> list:
        """At most ``limit`` draft tokens to follow ``context`` (int64 token ids)."""
        return propose(context, limit, self.max_ngram)

    def step(self, sched) -> bool:
        """One verification step over the pool; False (nothing run) when no row has a draft."""
        rows = list(sched.active.values())
        if any(row.pos + self.draft_tokens + 1 > sched.cache.length for row in rows):
            return False           # a row near the cache's end: no room to verify drafts
        drafts = {}
        for row in rows:
            left = row.request.max_new_tokens - len(row.tokens) - 1
            context = np.array(row.request.prompt + row.tokens, np.int64)
            drafts[row.slot] = self.draft(context, min(self.draft_tokens, left)) if left > 0 else []
        if not any(drafts.values()):
            return False
        k = self.draft_tokens
        tokens = np.full((sched.cache.slots, k + 1), sched.cache.pad_id, np.int32)
        starts = np.zeros(sched.cache.slots, np.int64)
        for row in rows:
            d = drafts[row.slot]
            tokens[row.slot, 0] = row.next
            tokens[row.slot, 1:1 + len(d)] = d
            starts[row.slot] = row.pos
        logits = sched.cache.forward(tokens, starts, pick_all=True)
        sched.stats.decode_steps += 1
        for row in rows:
            self._verify(sched, row, drafts[row.slot], logits[row.slot])
        return True

    def _verify(self, sched, row, draft: list, logits: np.ndarray) -> None:
        params = row.request.sampling
        pen = row.request.penalties
        sched.stats.spec_proposed += len(draft)
        for j in range(len(draft) + 1):
            proc = np.array(logits[j], np.float32, copy=True)
            proc[sched.real_vocab:] = -np.inf
            if pen.active:
                proc = pen.apply(proc, row.counts)
            if j == len(draft):
                token = int(choose(proc[None], [params], [row.rng])[0])
            elif params.temperature == 0:
                token = int(np.argmax(proc))
            else:
                token = accept_draft(filtered_probs(proc[None], params)[0], draft[j], row.rng)
            row.pos += 1
            going = sched.accept(row, token, proc)
            if j < len(draft) and token == draft[j]:
                sched.stats.spec_accepted += 1
            if not going or j == len(draft) or token != draft[j]:
                return
