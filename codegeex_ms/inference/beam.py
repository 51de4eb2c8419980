"""Beam search over a static cache of ``beams`` rows (:class:`~codegeex_ms.model.kv_cache.CachedDecoder`).

Every step extends each live beam by every token, keeps the ``beams`` best extensions by summed
log-probability (float64 log-softmax of the FP32 logits, padding rows of the vocabulary
excluded), and reorders the cache rows to follow their parents. A candidate ending in EOS, a
stop string or the stop rule is finished with its length-penalised score
``sum(log p) / max(len, 1) ** length_penalty`` (EOS scored but not counted); with
``early_stopping`` the search ends once ``beams`` candidates are finished. Stop strings and
the stop rule see only each candidate's new text: every beam carries its own incremental
detokenizer and scanner, copied to the candidates that continue it.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import numpy as np

from codegeex_ms.inference.sampling import log_softmax, mask_padding_rows
from codegeex_ms.inference.text import IncrementalText, StopStrings


class _BeamText:
    """A beam's tokens and text with its stop state; :meth:`extend` returns a new one."""

    def __init__(self, decode, stops: StopStrings, stop_fn):
        self.text = IncrementalText(decode)
        self.stops, self.stop_fn = stops, stop_fn
        self.scanner = stop_fn.scanner() if stop_fn is not None and hasattr(stop_fn, "scanner") else None

    @property
    def tokens(self) -> list:
        return self.text.tokens

    def extend(self, token: int) -> tuple:
        """(the beam continued by ``token``, its final text if it must stop there, else None)."""
        new = copy.copy(self)
        new.text = copy.copy(self.text)
        new.text.tokens = list(self.text.tokens)
        unchanged = self.text.stable
        text = new.text.push(token)
        cut = self.stops.find(text, unchanged)
        if cut is not None:
            return new, text[:cut]
        if new.scanner is not None:
            new.scanner = self.scanner.fork()
            end = new.scanner.scan(text, new.text.stable)
            if end is None and new.text.stable < len(text):
                end = new.scanner.fork().scan(text)
            return new, None if end is None else text[:end]
        if self.stop_fn is not None:
            return new, self.stop_fn(text)
        return new, None


def beam_search(decoder, prompt: list, max_new: int, *, eod: int, real_vocab_size: int, decode,
                prefill_length: int = 0, length_penalty: float = 1.0, early_stopping: bool = True,
                stop: Sequence[str] = (), stop_fn=None) -> tuple:
    """Beam search continuing ``prompt`` (token ids) for at most ``max_new`` tokens.

    ``decoder``: ``prefill(prompts, length) -> logits [B, V]``, ``decode(tokens [B]) -> logits
    [B, V]``, ``reorder(rows)``, with B the number of beams; ``prefill_length``: the padded
    prompt length (0: the prompt's). ``decode(ids) -> str`` is the tokenizer's. Returns
    (penalised score, token ids, text, finish reason) of the best finished candidate
    (reason ``"eos"``, ``"stop"`` or ``"length"``).
    """
    beams = decoder.batch_size
    logits = decoder.prefill([prompt] * beams, prefill_length)
    vocab = logits.shape[-1]
    stops = StopStrings(stop)
    live = [_BeamText(decode, stops, stop_fn)] * beams
    scores = np.full(beams, -np.inf)
    scores[0] = 0.0            # identical beams at the start: expand only the first
    done = []                  # (penalised score, tokens, text, reason)

    def finalise(tokens, logp, reason, text: Optional[str] = None):
        text = decode(tokens) if text is None else text
        done.append((logp / max(len(tokens), 1) ** length_penalty, tokens, text, reason))

    for step in range(max_new):
        logp = log_softmax(mask_padding_rows(logits, real_vocab_size))
        total = (scores[:, None] + logp).reshape(-1)
        order = np.argsort(-total, kind="stable")[:2 * beams]
        nxt, next_scores, parents, tokens = [], [], [], []
        for flat in order:
            parent, token = divmod(int(flat), vocab)
            if not np.isfinite(total[flat]):
                break
            if token == eod:
                finalise(list(live[parent].tokens), total[flat], "eos", live[parent].text.text)
                continue
            cand, final = live[parent].extend(token)
            if final is not None:
                finalise(list(cand.tokens), total[flat], "stop", final)
                continue
            nxt.append(cand)
            next_scores.append(total[flat])
            parents.append(parent)
            tokens.append(token)
            if len(nxt) == beams:
                break
        if not nxt or (early_stopping and len(done) >= beams):
            live = []          # finished: nothing live to add as "length"
            break
        while len(nxt) < beams:  # keep the batch shape: duplicate a dead beam slot
            nxt.append(nxt[0])
            next_scores.append(-np.inf)
            parents.append(parents[0])
            tokens.append(tokens[0])
        live, scores = nxt, np.array(next_scores)
        if step == max_new - 1:
            break
        decoder.reorder(np.array(parents, np.int32))
        logits = decoder.decode(np.array(tokens, np.int32))
    for beam, score in zip(live, scores):
        if np.isfinite(score) and beam.tokens:
            finalise(list(beam.tokens), score, "length", beam.text.text)
    return max(done, key=lambda d: d[0])
