"""Iteration-level scheduling over a slot KV cache (continuous batching).

A :class:`SlotScheduler` owns a :class:`~codegeex_ms.model.kv_cache.SlotKVCache` of ``slots``
rows. Each :meth:`~SlotScheduler.step` first admits waiting sample rows into free slots — their
prompts are prefilled in bucketed batches, one prefill per distinct prompt, whose cache is then
copied into every slot that continues it (``n`` samples of one prompt, or identical prompts of
different requests) — and then runs one decode step over the whole pool. A prompt that begins
with tokens some slot already holds (an active row's prompt and output so far, or what a freed
slot last held: HumanEval-X prompts of one language share a header, IDE requests resend the
file) starts from a copy of that slot's cache and prefills only the rest; a row is put
preferably into the free slot that holds the longest prefix of its prompt. A row that ends (EOS,
stop string, stop rule, length, cancellation) frees its slot at once, so the next step can give
it to a waiting row. Rows are admitted strictly first come, first served: nothing starves.

Every sample row draws from its own NumPy generator, ``default_rng([seed, seed_offset + i])``
for sample ``i`` of a seeded request, so its tokens do not depend on which other rows share the
pool; without a seed the generator is seeded from the OS.

Optionally (``speculative``, a :class:`~codegeex_ms.inference.speculative.PromptLookup`) rows
draft tokens by prompt lookup and verify them several at a time, exactly; see
:mod:`codegeex_ms.inference.speculative`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from codegeex_ms.inference.logits import Penalties, choose, top_logprobs
from codegeex_ms.inference.sampling import SamplingParams
from codegeex_ms.inference.text import IncrementalText, StopStrings

StopFn = Callable[[str], Optional[str]]
"""Given the completion so far, return the final (truncated) text to stop, or None to go on.
An object that also has ``scanner()`` (a fresh :class:`~codegeex_ms.humaneval.stopping.StopScanner`)
is applied incrementally instead."""


@dataclass
class Completion:
    text: str
    token_ids: list
    finish_reason: str          # "eos" | "stop" | "length" | a should_stop reason
    prompt_tokens: int
    score: Optional[float] = None    # beam search: length-penalised log-probability
    logprobs: Optional[list] = None  # per token: (token id, log-probability, {id: top log-prob})


@dataclass(eq=False)
class Request:
    """``n`` samples continuing ``prompt`` (token ids). Callbacks run on the scheduler's thread:
    ``on_text(i, text)`` streams sample i's new text (never part of a stop string, never half a
    character), ``on_done([Completion] * n)`` ends the request, ``should_stop(i)`` may end sample
    i after any token with the reason it returns. ``logprobs=k`` records each token's
    log-probability and the ``k`` most likely alternatives (k = 0: the token's only)."""

    prompt: list
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    n: int = 1
    seed: Optional[int] = None
    seed_offset: int = 0
    stop: tuple = ()
    stop_fn: Optional[StopFn] = None
    penalties: Penalties = Penalties()
    logprobs: Optional[int] = None
    on_text: Optional[Callable[[int, str], None]] = None
    on_done: Optional[Callable[[list], None]] = None
    should_stop: Optional[Callable[[int], Optional[str]]] = None
    cancelled: bool = False
    results: list = field(default_factory=list)
    trace_rows: Optional[list] = None   # with ``SlotScheduler.trace``: the last sample's logits per step
    _left: int = 0


@dataclass
class SchedulerStats:
    """Counters since creation (seconds are wall clock)."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    model_s: float = 0.0          # inside SlotKVCache.prefill/forward called here (not speculative steps)
    prefill_calls: int = 0
    prefill_tokens: int = 0       # real prompt tokens computed (shared prompts counted once)
    prefix_tokens: int = 0        # prompt tokens copied from a slot's cache instead
    decode_steps: int = 0
    generated_tokens: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0


def _stable_length(text: str, holdback: int) -> int:
    """How much of a growing completion can be streamed: not the last ``holdback`` characters
    (they may begin a stop string) nor a trailing U+FFFD (a multi-byte character whose remaining
    bytes are in the next token)."""
    end = len(text) - holdback
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return max(end, 0)


def _common_prefix(a: list, b: list) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class _Row:
    """One sample in a slot: its tokens, text, stop state and random generator."""

    def __init__(self, request: Request, index: int, decode):
        self.request, self.index = request, index
        self.slot = -1
        seed = request.seed
        self.rng = np.random.default_rng(None if seed is None else [seed, request.seed_offset + index])
        self.text = IncrementalText(decode)
        self.stops = StopStrings(request.stop)
        fn = request.stop_fn
        self.scanner = fn.scanner() if fn is not None and hasattr(fn, "scanner") else None
        self.counts = {}
        self.logprobs = [] if request.logprobs is not None else None
        self.final_text = None
        self.finish = None
        self.emitted = 0
        self.pos = 0           # tokens in this row's cache
        self.next = 0          # token to feed at cache position ``pos``
        self.trace = None

    @property
    def tokens(self) -> list:
        return self.text.tokens


class SlotScheduler:
    """Continuous batching of :class:`Request` objects over ``slots`` cache rows.

    ``tokenizer`` needs ``decode(list[int]) -> str``; ``eod`` ends a sample, ``pad`` fills
    unused inputs, tokens at or above ``real_vocab_size`` are never chosen. ``share_prompts``:
    rows admitted together with equal prompts share one prefill (off: one prefill per row, for
    comparison). ``share_prefixes``: a prompt whose first ``min_prefix`` or more tokens some slot
    holds copies them instead of computing them. Not thread-safe:
    one thread calls :meth:`submit`/:meth:`step` (``Request.cancelled`` may be set from any).
    """

    def __init__(self, cache, tokenizer, *, eod: int, real_vocab_size: int, speculative=None,
                 share_prompts: bool = True, share_prefixes: bool = True, min_prefix: int = 16):
        self.cache = cache
        self.share_prompts = share_prompts
        self.share_prefixes, self.min_prefix = share_prefixes, max(1, min_prefix)
        self.held = {}                   # free slot -> tokens its cache positions 0.. still hold
        self.tokenizer = tokenizer
        self.eod, self.real_vocab = eod, real_vocab_size
        self.speculative = speculative
        self.free = list(range(cache.slots - 1, -1, -1))   # pop() gives the lowest slot
        self.active = {}                 # slot -> _Row
        self.waiting = deque()           # _Row not yet admitted, first come first served
        self.stats = SchedulerStats()
        self.trace = False               # keep every row's logits (tests)

    # ------------------------------------------------------------------ requests

    def check(self, request: Request) -> None:
        """Raise ValueError if ``request`` can never run in this cache."""
        if not request.prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if request.max_new_tokens < 1 or request.n < 1:
            raise ValueError(f"max_new_tokens and n must be >= 1, got {request.max_new_tokens}, {request.n}")
        if len(request.prompt) + request.max_new_tokens > self.cache.length:
            raise ValueError(f"{len(request.prompt)} prompt tokens + max_new_tokens="
                             f"{request.max_new_tokens} exceed the cache's {self.cache.length} "
                             "positions: shorten the prompt or lower max_new_tokens")

    def submit(self, request: Request) -> None:
        """Queue ``request``'s ``n`` samples."""
        self.check(request)
        request.results = [None] * request.n
        request._left = request.n
        for i in range(request.n):
            self.waiting.append(_Row(request, i, self.tokenizer.decode))

    def reset(self) -> None:
        """Forget every row (after a failed step): all slots free, nothing waiting."""
        self.free = list(range(self.cache.slots - 1, -1, -1))
        self.active.clear()
        self.waiting.clear()
        self.held.clear()

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting

    def run(self) -> None:
        """Step until every submitted request is done."""
        while not self.idle:
            self.step()

    # ------------------------------------------------------------------ one iteration

    def step(self) -> None:
        """Admit waiting rows into free slots (prefill), then decode one step for the pool."""
        self._admit()
        if not self.active:
            return
        t0 = time.perf_counter()
        if self.speculative is None or not self.speculative.step(self):
            self._decode_step()
        self.stats.decode_s += time.perf_counter() - t0

    def _decode_step(self) -> None:
        p = self.cache.slots
        tokens = np.full((p, 1), self.cache.pad_id, np.int32)
        starts = np.zeros(p, np.int64)
        for slot, row in self.active.items():
            tokens[slot, 0], starts[slot] = row.next, row.pos
        t0 = time.perf_counter()
        logits = self.cache.forward(tokens, starts)
        self.stats.model_s += time.perf_counter() - t0
        self.stats.decode_steps += 1
        rows = list(self.active.values())
        for row in rows:
            row.pos += 1
        self._advance(rows, logits[[row.slot for row in rows]])

    def _admit(self) -> None:
        while self.waiting and self.waiting[0].request.cancelled:
            self._finish_unstarted(self.waiting.popleft())
        taken = []
        while self.waiting and self.free:
            row = self.waiting.popleft()
            if row.request.cancelled:
                self._finish_unstarted(row)
                continue
            row.slot = self._take_slot(row.request.prompt)
            taken.append(row)
        if not taken:
            return
        groups = {}                      # prompt -> rows continuing it
        for row in taken:
            key = tuple(row.request.prompt) if self.share_prompts else (id(row),)
            groups.setdefault(key, []).append(row)
        prompts = list(groups)
        t0 = time.perf_counter()
        while prompts:
            batch = [prompts.pop(0)]
            while prompts and self.cache.prefill_fits(
                    [len(groups[q][0].request.prompt) for q in batch + prompts[:1]]):
                batch.append(prompts.pop(0))
            tokens = [groups[q][0].request.prompt for q in batch]
            prefixes = [self._prefix_source(t) for t in tokens] if self.share_prefixes else None
            t1 = time.perf_counter()
            logits = self.cache.prefill(tokens, [[r.slot for r in groups[q]] for q in batch], prefixes)
            self.stats.model_s += time.perf_counter() - t1
            self.stats.prefill_calls += 1
            reused = sum(m for _, m in filter(None, prefixes or []))
            self.stats.prefix_tokens += reused
            self.stats.prefill_tokens += sum(len(t) for t in tokens) - reused
            rows, picked = [], []
            for i, q in enumerate(batch):
                for row in groups[q]:
                    self.held.pop(row.slot, None)
                    row.pos = len(tokens[i])
                    self.active[row.slot] = row
                    rows.append(row)
                    picked.append(i)
            self._advance(rows, logits[picked])
        self.stats.prefill_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ prefix reuse

    def _held_tokens(self, slot: int) -> list:
        """The tokens whose keys/values slot ``slot`` holds at positions 0.. (may be empty)."""
        row = self.active.get(slot)
        if row is None:
            return self.held.get(slot, [])
        prompt = row.request.prompt
        return list(prompt) + row.tokens[:row.pos - len(prompt)]

    def _take_slot(self, prompt: list) -> int:
        """A free slot for a row continuing ``prompt``: the one holding the longest prefix of it
        (at least ``min_prefix`` tokens), else the lowest."""
        best, best_len = None, self.min_prefix - 1
        if self.share_prefixes:
            for slot in self.free:
                n = _common_prefix(prompt, self.held.get(slot, []))
                if n > best_len:
                    best, best_len = slot, n
        if best is None:
            return self.free.pop()
        self.free.remove(best)
        return best

    def _prefix_source(self, prompt: list):
        """``(slot, m)``: a slot whose cache holds ``prompt[:m]`` (m >= min_prefix, m < len(prompt),
        the longest), or None."""
        best = None
        for slot in list(self.active) + list(self.held):
            m = min(_common_prefix(prompt, self._held_tokens(slot)), len(prompt) - 1)
            if m >= self.min_prefix and (best is None or m > best[1]):
                best = (slot, m)
        return best

    # ------------------------------------------------------------------ tokens

    def _advance(self, rows: list, logits: np.ndarray) -> None:
        """Choose and accept the next token of each of ``rows`` from its ``logits`` row."""
        if self.trace:
            for i, row in enumerate(rows):
                row.trace = row.trace if row.trace is not None else []
                row.trace.append(np.array(logits[i], np.float32))
        logits = np.array(logits, np.float32, copy=True)
        logits[:, self.real_vocab:] = -np.inf
        for i, row in enumerate(rows):
            pen = row.request.penalties
            if pen.active:
                logits[i] = pen.apply(logits[i], row.counts)
        picks = choose(logits, [r.request.sampling for r in rows], [r.rng for r in rows])
        for i, row in enumerate(rows):
            self.accept(row, int(picks[i]), logits[i])

    def accept(self, row: _Row, token: int, logits: Optional[np.ndarray] = None) -> bool:
        """Add ``token`` to ``row`` (``logits``: its processed distribution, for logprobs);
        ends the row when it should stop. Returns True if the row goes on."""
        req = row.request
        if row.logprobs is not None and logits is not None:
            logp, top = top_logprobs(logits, token, req.logprobs)
            row.logprobs.append((token, logp, top))
        self.stats.generated_tokens += 1
        if token == self.eod:
            self._finish(row, "eos")
            return False
        row.counts[token] = row.counts.get(token, 0) + 1
        unchanged = row.text.stable
        text = row.text.push(token)
        reason = None
        cut = row.stops.find(text, unchanged)
        if cut is not None:
            row.final_text, reason = text[:cut], "stop"
        elif row.scanner is not None:
            end = row.scanner.scan(text, row.text.stable)
            if end is None and row.text.stable < len(text):
                end = row.scanner.fork().scan(text)
            if end is not None:
                row.final_text, reason = text[:end], "stop"
        elif req.stop_fn is not None:
            final = req.stop_fn(text)
            if final is not None:
                row.final_text, reason = final, "stop"
        if reason is None and req.should_stop is not None:
            reason = req.should_stop(row.index)
        if reason is None and req.cancelled:
            reason = "cancelled"
        if reason is None and len(row.tokens) >= req.max_new_tokens:
            reason = "length"
        if reason is None:
            self._stream(row, _stable_length(text, row.stops.holdback))
            row.next = token
            return True
        self._finish(row, reason)
        return False

    def _stream(self, row: _Row, upto: int) -> None:
        on_text = row.request.on_text
        text = row.final_text if row.final_text is not None else row.text.text
        if on_text is not None and upto > row.emitted:
            on_text(row.index, text[row.emitted:upto])
            row.emitted = upto

    def _finish(self, row: _Row, reason: str) -> None:
        row.finish = reason
        text = row.final_text if row.final_text is not None else row.text.text
        self._stream(row, len(text))
        if row.slot >= 0:
            self.held[row.slot] = self._held_tokens(row.slot)
            del self.active[row.slot]
            self.free.append(row.slot)
        req = row.request
        req.results[row.index] = Completion(text, list(row.tokens), reason, len(req.prompt),
                                            logprobs=row.logprobs)
        if row.trace is not None:
            req.trace_rows = row.trace
        req._left -= 1
        if req._left == 0 and req.on_done is not None:
            req.on_done(req.results)

    def _finish_unstarted(self, row: _Row) -> None:
        self._finish(row, "cancelled")
