"""Batched text generation: greedy and sampling through the slot scheduler, and beam search.

Greedy and sampled rows run on a :class:`~codegeex_ms.inference.scheduler.SlotScheduler` whose
pool has a power-of-two number of slots (at most ``max_slots``; more rows wait for free slots)
and a power-of-two cache length covering the longest prompt plus ``max_new_tokens``. Beam search
(:mod:`codegeex_ms.inference.beam`) runs on a static cache of one row per beam
(:class:`~codegeex_ms.model.kv_cache.CachedDecoder`), the prompt left-padded to a bucket length
P (a power of two, at least 16). Graph mode compiles one graph per shape and never per step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from codegeex_ms.inference.beam import beam_search
from codegeex_ms.inference.sampling import SamplingParams
from codegeex_ms.inference.scheduler import (Completion, Request, SlotScheduler, StopFn,
                                             _stable_length)

__all__ = ["Completion", "Generator", "PromptTooLongError", "StopFn", "Timing", "bucket",
           "_stable_length"]

RowStopFn = Callable[[int], Optional[str]]
"""Given a row, return a finish reason to end that row now, or None to go on."""


class PromptTooLongError(ValueError):
    """Prompt + new tokens exceed the model's positions and truncation was not allowed."""


@dataclass
class Timing:
    """Wall-clock seconds of the last call, prefill and decode separately."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    decode_steps: int = 0
    compiles: list = field(default_factory=list)


def bucket(n: int, limit: int, smallest: int = 16) -> int:
    """Smallest power of two >= max(n, smallest), capped at ``limit``."""
    b = smallest
    while b < n:
        b *= 2
    return min(b, limit)


class Generator:
    """Generate completions from a loaded :class:`~codegeex_ms.model.CodeGeeX`.

    ``tokenizer`` needs ``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and ``eod_id``.
    ``max_length`` bounds prompt + new tokens (default: the model's positions). ``max_decoders``
    (batch or slots, cache length) shapes keep their compiled graphs and caches alive, least
    recently used dropped first (1: only the last shape, the least memory). ``max_slots`` caps
    the rows decoded together. ``speculative``: a
    :class:`~codegeex_ms.inference.speculative.PromptLookup` to decode with (None: plain).
    """

    def __init__(self, model, tokenizer, max_length: int = 0, max_decoders: int = 1,
                 max_slots: int = 64, speculative=None):
        self.model = model
        self.cfg = model.config
        self.tokenizer = tokenizer
        self.max_length = max_length or self.cfg.max_position_embeddings
        if self.max_length > self.cfg.max_position_embeddings:
            raise ValueError(f"max_length {self.max_length} exceeds the model's "
                             f"{self.cfg.max_position_embeddings} positions")
        self.eod = tokenizer.eod_id          # ends a sequence
        self.pad = self.cfg.eod_token_id     # fills left padding (masked out)
        self.timing = Timing()
        self.trace = None      # set to a list to record every step's logits [B, V]
        if max_decoders < 1:
            raise ValueError(f"max_decoders must be >= 1, got {max_decoders}")
        self.max_decoders = max_decoders
        self.max_slots = max_slots
        self.speculative = speculative     # a PromptLookup for sampling/greedy, or None
        self._decoders = OrderedDict()
        model.set_train(False)

    # ------------------------------------------------------------------ cache management

    def _decoder(self, batch: int, length: int):
        from codegeex_ms.model.kv_cache import CachedDecoder
        key = (batch, length)
        if key in self._decoders:
            self._decoders.move_to_end(key)
        else:
            while len(self._decoders) >= self.max_decoders:
                self._decoders.popitem(last=False)  # free that cache before allocating this one
            self._decoders[key] = CachedDecoder(self.model, batch, length)
            self.timing.compiles.append(key)
        return self._decoders[key]

    # ------------------------------------------------------------------ prompt handling

    def encode_prompts(self, prompts: Sequence, max_new_tokens: int, truncate: str = "error") -> list:
        """Token lists for ``prompts`` (strings or id lists), checked against ``max_length``.

        ``truncate="left"`` drops the oldest prompt tokens to make room; ``"error"`` raises
        :class:`PromptTooLongError`.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_new_tokens >= self.max_length:
            raise PromptTooLongError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt "
                                     f"within {self.max_length} positions")
        out = []
        for i, prompt in enumerate(prompts):
            ids = list(self.tokenizer.encode(prompt)) if isinstance(prompt, str) else list(prompt)
            if not ids:
                raise ValueError(f"prompt {i} is empty: give at least one token")
            room = self.max_length - max_new_tokens
            if len(ids) > room:
                if truncate != "left":
                    raise PromptTooLongError(
                        f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                        f"at most {room} fit in {self.max_length} positions (shorten the prompt, "
                        f"lower max_new_tokens, or truncate from the left)")
                ids = ids[-room:]
            out.append(ids)
        return out

    def _prompt_bucket(self, longest: int, max_new: int) -> int:
        """Padded prompt length: a power-of-two bucket that still leaves ``max_new`` slots."""
        return min(bucket(longest, self.max_length), self.max_length - max_new)

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: Sequence, max_new_tokens: int = 128,
                 sampling: SamplingParams = SamplingParams(), *, num_beams: int = 1,
                 length_penalty: float = 1.0, early_stopping: bool = True,
                 stop: Sequence[str] = (), stop_fn: Optional[StopFn] = None,
                 seed: Optional[int] = None, truncate: str = "error",
                 on_text: Optional[Callable[[int, str], None]] = None,
                 should_stop: Optional[RowStopFn] = None) -> list:
        """Complete every prompt; returns one :class:`Completion` per prompt.

        ``stop`` strings end a sequence (excluded from the text), as does EOS and ``stop_fn``.
        ``on_text(row, new_text)`` streams text as it is produced (never part of a stop string).
        ``should_stop(row)`` is asked after each new token of a live row; a returned string ends
        that row with it as ``finish_reason`` (e.g. its request was cancelled); generation ends
        once every row has ended. Sampling and greedy only.
        ``num_beams > 1`` runs beam search (sampling parameters are then ignored).
        """
        token_lists = self.encode_prompts(prompts, max_new_tokens, truncate)
        if num_beams > 1:
            if should_stop is not None:
                raise ValueError("should_stop is not supported with beam search (num_beams > 1)")
            return [self._beam_search(toks, max_new_tokens, num_beams, length_penalty,
                                      early_stopping, stop, stop_fn) for toks in token_lists]
        return self._sample(token_lists, max_new_tokens, sampling, stop, stop_fn, seed, on_text,
                            should_stop)

    # ------------------------------------------------------------------ sampling / greedy

    def _scheduler(self, rows: int, length: int, speculative) -> SlotScheduler:
        """The slot scheduler for up to ``rows`` rows of ``length`` positions (LRU-kept)."""
        from codegeex_ms.model.kv_cache import SlotKVCache
        slots = min(bucket(rows, self.max_slots, smallest=1), self.max_slots)
        key = ("slots", slots, length, speculative)
        if key in self._decoders:
            self._decoders.move_to_end(key)
        else:
            while len(self._decoders) >= self.max_decoders:
                self._decoders.popitem(last=False)
            cache = SlotKVCache(self.model, slots, length, self.pad)
            self._decoders[key] = SlotScheduler(cache, self.tokenizer, eod=self.eod,
                                                real_vocab_size=self.cfg.real_vocab_size,
                                                speculative=speculative)
            self.timing.compiles.append(key[1:3])
        return self._decoders[key]

    def slot_scheduler(self, slots: int, length: int = 0, prefill_tokens: int = 2048,
                       speculative=None) -> SlotScheduler:
        """A new scheduler of ``slots`` rows of ``length`` positions (default ``max_length``),
        e.g. for a server's continuous batching."""
        from codegeex_ms.model.kv_cache import SlotKVCache
        cache = SlotKVCache(self.model, slots, length or self.max_length, self.pad,
                            prefill_tokens=prefill_tokens)
        return SlotScheduler(cache, self.tokenizer, eod=self.eod,
                             real_vocab_size=self.cfg.real_vocab_size, speculative=speculative)

    def _sample(self, token_lists, max_new, sampling, stop, stop_fn, seed, on_text, should_stop):
        """Sampling/greedy through the slot scheduler: row r is a request of its own, seeded with
        ``[seed, r]``; identical prompts are prefilled once."""
        b = len(token_lists)
        length = bucket(max(len(t) for t in token_lists) + max_new, self.max_length)
        sched = self._scheduler(b, length, self.speculative)
        sched.trace = self.trace is not None
        before = vars(sched.stats).copy()
        requests = []
        for r, toks in enumerate(token_lists):
            requests.append(Request(
                toks, max_new, sampling, seed=seed, seed_offset=r, stop=tuple(stop), stop_fn=stop_fn,
                on_text=None if on_text is None else (lambda _i, text, r=r: on_text(r, text)),
                should_stop=None if should_stop is None else (lambda _i, r=r: should_stop(r))))
        for req in requests:
            sched.submit(req)
        sched.run()
        st = sched.stats
        self.timing = Timing(st.prefill_s - before["prefill_s"], st.decode_s - before["decode_s"],
                             st.prefill_tokens - before["prefill_tokens"],
                             st.decode_steps - before["decode_steps"], self.timing.compiles)
        out = [req.results[0] for req in requests]
        if self.trace is not None:
            self._record_trace(sched, requests)
        return out

    def _record_trace(self, sched, requests) -> None:
        """``trace[step]`` = [B, V] logits of every row at that step (a finished row repeats
        its last ones)."""
        rows = [req.trace_rows for req in requests]
        steps = max(len(t) for t in rows)
        for step in range(steps):
            self.trace.append(np.stack([t[min(step, len(t) - 1)] for t in rows]))

    # ------------------------------------------------------------------ beam search

    def _beam_search(self, prompt, max_new, beams, length_penalty, early_stopping, stop, stop_fn):
        p = self._prompt_bucket(len(prompt), max_new)
        decoder = self._decoder(beams, bucket(p + max_new, self.max_length))
        score, tokens, text, reason = beam_search(
            decoder, prompt, max_new, eod=self.eod, real_vocab_size=self.cfg.real_vocab_size,
            decode=self.tokenizer.decode, prefill_length=p, length_penalty=length_penalty,
            early_stopping=early_stopping, stop=stop, stop_fn=stop_fn)
        return Completion(text, tokens, reason, len(prompt), score=float(score))
