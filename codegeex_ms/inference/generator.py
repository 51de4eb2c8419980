"""Batched text generation with the static KV cache: greedy, sampling and beam search.

Prompts of different lengths are left-padded to a bucket length P (a power of two, at least 16),
so every row writes the same cache slot at each step; position ids count from each row's first
real token and the mask hides the padding slots. The cache length is a power-of-two bucket of
``P + max_new_tokens`` (capped at ``max_length``): graph mode compiles one prefill and one decode
graph per bucket and never per step.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from codegeex_ms.inference.sampling import SamplingParams, log_softmax, mask_padding_rows, next_tokens

StopFn = Callable[[str], Optional[str]]
"""Given the completion so far, return the final (truncated) text to stop, or None to go on."""

RowStopFn = Callable[[int], Optional[str]]
"""Given a row, return a finish reason to end that row now, or None to go on."""


class PromptTooLongError(ValueError):
    """Prompt + new tokens exceed the model's positions and truncation was not allowed."""


@dataclass
class Completion:
    text: str
    token_ids: list
    finish_reason: str          # "eos" | "stop" | "length"
    prompt_tokens: int
    score: Optional[float] = None  # beam search: length-penalised log-probability


@dataclass
class Timing:
    """Wall-clock seconds of the last call, prefill and decode separately."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    decode_steps: int = 0
    compiles: list = field(default_factory=list)


def _stable_length(text: str, holdback: int) -> int:
    """How much of a growing completion can be streamed: not the last ``holdback`` characters
    (they may begin a stop string) nor a trailing U+FFFD (a multi-byte character whose remaining
    bytes are in the next token)."""
    end = len(text) - holdback
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return max(end, 0)


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
    (batch, cache length) shapes keep their compiled graphs and caches alive, least recently used
    dropped first (1: only the last shape, the least memory).
    """

    def __init__(self, model, tokenizer, max_length: int = 0, max_decoders: int = 1):
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

    def _prefill_inputs(self, token_lists, prompt_len, cache_len):
        b = len(token_lists)
        ids = np.full((b, prompt_len), self.pad, np.int32)
        pads = np.zeros(b, np.int64)
        for r, toks in enumerate(token_lists):
            pads[r] = prompt_len - len(toks)
            ids[r, pads[r]:] = toks
        slots = np.arange(prompt_len)
        pos = np.maximum(slots[None, :] - pads[:, None], 0).astype(np.int32)
        keys = np.arange(cache_len)
        mask = ((keys[None, None, :] <= slots[None, :, None])
                & (keys[None, None, :] >= pads[:, None, None])).astype(np.float32)
        return ids, pos, mask, pads

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

    def _sample(self, token_lists, max_new, sampling, stop, stop_fn, seed, on_text, should_stop):
        b = len(token_lists)
        p = self._prompt_bucket(max(len(t) for t in token_lists), max_new)
        length = bucket(p + max_new, self.max_length)
        decoder = self._decoder(b, length)
        rng = np.random.default_rng(seed)
        ids, pos, mask, pads = self._prefill_inputs(token_lists, p, length)

        t0 = time.perf_counter()
        logits = decoder.step(ids, pos, mask, 0)
        self.timing = Timing(prefill_s=time.perf_counter() - t0, prefill_tokens=b * p,
                             compiles=self.timing.compiles)
        generated = [[] for _ in range(b)]
        texts, emitted = [""] * b, [0] * b
        if self.trace is not None:
            self.trace.append(logits)
        finish = [None] * b
        holdback = max((len(s) for s in stop), default=0)
        t0 = time.perf_counter()
        for step in range(max_new):
            tokens = next_tokens(logits, sampling, rng, self.cfg.real_vocab_size)
            for r in range(b):
                if finish[r] is not None:
                    continue
                if tokens[r] == self.eod:
                    finish[r] = "eos"
                else:
                    generated[r].append(int(tokens[r]))
                    texts[r], finish[r] = self._check_stop(generated[r], stop, stop_fn)
                    if finish[r] is None and should_stop is not None:
                        finish[r] = should_stop(r)
                if on_text is not None:
                    safe = len(texts[r]) if finish[r] else _stable_length(texts[r], holdback)
                    safe = max(safe, emitted[r])
                    if safe > emitted[r]:
                        on_text(r, texts[r][emitted[r]:safe])
                        emitted[r] = safe
            if all(f is not None for f in finish) or step == max_new - 1:
                break
            slot = p + step
            keys = np.arange(length)
            step_mask = ((keys[None, :] <= slot) & (keys[None, :] >= pads[:, None]))
            logits = decoder.step(tokens[:, None].astype(np.int32),
                                  (slot - pads)[:, None].astype(np.int32),
                                  step_mask[:, None, :].astype(np.float32), slot)
            self.timing.decode_steps += 1
            if self.trace is not None:
                self.trace.append(logits)
        self.timing.decode_s = time.perf_counter() - t0
        out = []
        for r in range(b):
            reason = finish[r] or "length"
            if on_text is not None and reason == "length" and len(texts[r]) > emitted[r]:
                on_text(r, texts[r][emitted[r]:])
            out.append(Completion(texts[r], generated[r], reason, len(token_lists[r])))
        return out

    def _check_stop(self, generated, stop, stop_fn):
        """(text, finish reason or None) after the newest token."""
        text = self.tokenizer.decode(generated)
        cuts = [text.find(s) for s in stop if s and s in text]
        if cuts:
            return text[:min(cuts)], "stop"
        if stop_fn is not None:
            final = stop_fn(text)
            if final is not None:
                return final, "stop"
        return text, None

    # ------------------------------------------------------------------ beam search

    def _beam_search(self, prompt, max_new, beams, length_penalty, early_stopping, stop, stop_fn):
        p = self._prompt_bucket(len(prompt), max_new)
        length = bucket(p + max_new, self.max_length)
        decoder = self._decoder(beams, length)
        ids, pos, mask, pads = self._prefill_inputs([prompt] * beams, p, length)
        logits = decoder.step(ids, pos, mask, 0)
        vocab = logits.shape[-1]
        seqs = [[] for _ in range(beams)]
        scores = np.full(beams, -np.inf)
        scores[0] = 0.0            # identical beams at the start: expand only the first
        done = []                  # (penalised score, tokens, text, reason)

        def finalise(tokens, logp, reason, text=None):
            text = self.tokenizer.decode(tokens) if text is None else text
            done.append((logp / max(len(tokens), 1) ** length_penalty, tokens, text, reason))

        for step in range(max_new):
            logp = log_softmax(mask_padding_rows(logits, self.cfg.real_vocab_size))
            total = (scores[:, None] + logp).reshape(-1)
            order = np.argsort(-total, kind="stable")[:2 * beams]
            next_seqs, next_scores, parents, tokens = [], [], [], []
            for flat in order:
                parent, token = divmod(int(flat), vocab)
                if not np.isfinite(total[flat]):
                    break
                cand = seqs[parent] + [token]
                if token == self.eod:
                    finalise(seqs[parent], total[flat], "eos")
                    continue
                text, reason = self._check_stop(cand, stop, stop_fn)
                if reason:
                    finalise(cand, total[flat], reason, text)
                    continue
                next_seqs.append(cand)
                next_scores.append(total[flat])
                parents.append(parent)
                tokens.append(token)
                if len(next_seqs) == beams:
                    break
            if not next_seqs or (early_stopping and len(done) >= beams):
                seqs = []          # finished: nothing live to add as "length"
                break
            while len(next_seqs) < beams:  # keep the batch shape: duplicate a dead beam slot
                next_seqs.append(next_seqs[0])
                next_scores.append(-np.inf)
                parents.append(parents[0])
                tokens.append(tokens[0])
            seqs, scores = next_seqs, np.array(next_scores)
            if step == max_new - 1:
                break
            decoder.reorder(np.array(parents, np.int32))
            slot = p + step
            keys = np.arange(length)
            step_mask = ((keys[None, :] <= slot) & (keys[None, :] >= pads[:, None]))
            logits = decoder.step(np.array(tokens, np.int32)[:, None],
                                  (slot - pads)[:, None].astype(np.int32),
                                  step_mask[:, None, :].astype(np.float32), slot)
        for tokens, score in zip(seqs, scores):
            if np.isfinite(score) and tokens:
                finalise(tokens, score, "length")
        best = max(done, key=lambda d: d[0])
        return Completion(best[2], best[1], best[3], len(prompt), score=float(best[0]))
