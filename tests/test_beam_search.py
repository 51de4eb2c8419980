"""Beam search (``Generator.generate(num_beams > 1)``, ``inference/beam.py``) against independent
references.

The generator drives a fake KV-cache decoder whose next-token logits are a fixed pseudo-random
function of each row's full history (prompt + generated tokens). The fake tracks every row's
history exactly as a cache would: ``decode`` appends the fed tokens, ``reorder`` permutes rows. So
a search that forgets or misapplies the cache reorder, or that returns the greedy path, gives
other sequences than the references:

* brute force: with B >= V**(L-1) beams (and no early stopping) beam search is exhaustive, so
  its answer must be the best of *all* sequences of at most L tokens (ending in EOS or at L) by
  length-penalised score ``sum(log p) / max(len, 1) ** penalty`` (EOS scored, not counted);
* a plain NumPy beam search written here over the same log-probabilities, for small B, with and
  without early stopping;
* several prompts in one call equal one call per prompt.

Scores are compared to 1e-12 (float64 sums of the same float64 log-probabilities, at most L
terms, added in the same order); sequences exactly. Logits are continuous random values, so
ties (where the order of equal candidates would matter) have probability zero.
"""

import itertools
import types
import zlib

import numpy as np
import pytest

from codegeex_ms.inference.generator import Generator

EOS = 0
PAD = 99  # the generator's left-padding id (config eod_token_id); never in a prompt


def logits_of(history, vocab, eos_bias):
    """Next-token logits (float32 [vocab]) after ``history``: random but fixed per history."""
    rng = np.random.default_rng(zlib.crc32(np.asarray(history, np.int64).tobytes()))
    out = 2.0 * rng.standard_normal(vocab)
    out[EOS] += eos_bias
    return out.astype(np.float32)


def logp_of(history, vocab, eos_bias):
    """float64 log-softmax of ``logits_of`` (as the generator computes it)."""
    x = logits_of(history, vocab, eos_bias).astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class FakeDecoder:
    """Rows of token histories standing in for a KV cache of ``batch`` rows (the
    :class:`~codegeex_ms.model.kv_cache.CachedDecoder` interface)."""

    def __init__(self, batch, vocab, eos_bias, pad):
        self.batch_size = batch
        self.rows = [[] for _ in range(batch)]
        self.vocab, self.eos_bias, self.pad = vocab, eos_bias, pad

    def _logits(self):
        return np.stack([logits_of(row, self.vocab, self.eos_bias) for row in self.rows])

    def prefill(self, prompts, length):
        assert len(prompts) == self.batch_size and length >= max(len(p) for p in prompts)
        self.rows = [list(p) for p in prompts]
        return self._logits()

    def decode(self, tokens):
        self.rows = [row + [int(t)] for row, t in zip(self.rows, np.asarray(tokens).reshape(-1))]
        return self._logits()

    def reorder(self, parents):
        self.rows = [list(self.rows[int(p)]) for p in parents]


class FakeTokenizer:
    eod_id = EOS

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def make_generator(vocab, eos_bias=0.0):
    # prompts never contain PAD, so stripping it recovers the prompt exactly
    config = types.SimpleNamespace(max_position_embeddings=64, eod_token_id=PAD,
                                   real_vocab_size=vocab)
    model = types.SimpleNamespace(config=config, set_train=lambda mode: None)
    gen = Generator(model, FakeTokenizer(), max_length=64)
    gen._decoder = lambda batch, length: FakeDecoder(batch, vocab, eos_bias, PAD)
    return gen


def penalised(score, tokens, penalty):
    return score / max(len(tokens), 1) ** penalty


def brute_force(prompt, vocab, max_new, penalty, eos_bias):
    """Every finished sequence: (penalised score, tokens) — EOS at any step or none up to L."""
    out = []

    def walk(tokens, score):
        logp = logp_of(list(prompt) + tokens, vocab, eos_bias)
        for t in range(vocab):
            total = score + logp[t]
            if t == EOS:
                out.append((penalised(total, tokens, penalty), tokens))
            elif len(tokens) + 1 == max_new:
                out.append((penalised(total, tokens + [t], penalty), tokens + [t]))
            else:
                walk(tokens + [t], total)
    walk([], 0.0)
    return sorted(out, key=lambda c: -c[0])


def numpy_beam_search(prompt, vocab, beams, max_new, penalty, early_stopping, eos_bias):
    """Textbook beam search: expand every live beam, rank the candidates by summed log-prob,
    move EOS candidates to the finished list, keep the best ``beams`` live ones (looking at
    most at 2 × beams candidates), stop early once ``beams`` are finished, then finish the
    live ones; the answer is the finished sequence with the best penalised score."""
    live, finished = [([], 0.0)], []
    for step in range(max_new):
        candidates = []
        for tokens, score in live:
            logp = logp_of(list(prompt) + tokens, vocab, eos_bias)
            candidates += [(score + logp[t], tokens, t) for t in range(vocab)]
        candidates.sort(key=lambda c: -c[0])
        live = []
        for total, tokens, t in candidates[:2 * beams]:
            if t == EOS:
                finished.append((penalised(total, tokens, penalty), tokens))
            else:
                live.append((tokens + [t], total))
                if len(live) == beams:
                    break
        if early_stopping and len(finished) >= beams:
            live = []
            break
        if step == max_new - 1:
            break
    finished += [(penalised(score, tokens, penalty), tokens) for tokens, score in live]
    return max(finished, key=lambda c: c[0])


PENALTIES = [0.0, 0.5, 1.0, 2.0]
EXHAUSTIVE = [(3, 4, 0.0), (4, 3, 1.0), (2, 6, -0.5)]  # (V, L, EOS logit bias)
PROMPTS = [[1, 2, 1], [2], [1, 1, 2, 2]]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("vocab,max_new,eos_bias", EXHAUSTIVE)
def test_exhaustive_beams_find_the_brute_force_best(vocab, max_new, penalty, eos_bias, prompt):
    beams = vocab ** (max_new - 1)
    gen = make_generator(vocab, eos_bias)
    got = gen.generate([prompt], max_new, num_beams=beams, length_penalty=penalty,
                       early_stopping=False)[0]
    ranked = brute_force(prompt, vocab, max_new, penalty, eos_bias)
    best_score, best_tokens = ranked[0]
    assert ranked[0][0] - ranked[1][0] > 1e-9  # the answer is unique
    assert got.token_ids == best_tokens
    assert got.score == pytest.approx(best_score, abs=1e-12)
    assert got.finish_reason == ("length" if len(best_tokens) == max_new else "eos")


def test_brute_force_best_differs_from_greedy_somewhere():
    """The cases above are not won by the greedy path alone (else they would prove little)."""
    differs = 0
    for (vocab, max_new, eos_bias), penalty, prompt in itertools.product(EXHAUSTIVE, PENALTIES,
                                                                         PROMPTS):
        greedy = []
        for _ in range(max_new):
            t = int(np.argmax(logp_of(prompt + greedy, vocab, eos_bias)))
            if t == EOS:
                break
            greedy.append(t)
        differs += brute_force(prompt, vocab, max_new, penalty, eos_bias)[0][1] != greedy
    assert differs >= 6  # of 36 cases


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("beams", [2, 3, 5])
def test_small_beams_equal_a_numpy_beam_search(beams, penalty, early_stopping):
    vocab, max_new = 7, 9
    for seed, eos_bias in [(0, -1.0), (1, 0.5), (2, 1.5)]:
        prompt = [int(t) for t in np.random.default_rng(seed).integers(1, vocab, size=4)]
        gen = make_generator(vocab, eos_bias)
        got = gen.generate([prompt], max_new, num_beams=beams, length_penalty=penalty,
                           early_stopping=early_stopping)[0]
        score, tokens = numpy_beam_search(prompt, vocab, beams, max_new, penalty,
                                          early_stopping, eos_bias)
        assert got.token_ids == tokens, (seed, eos_bias)
        assert got.score == pytest.approx(score, abs=1e-12)


def test_batched_prompts_equal_one_call_each():
    vocab, max_new, beams = 6, 7, 3
    prompts = [[1, 2, 3], [4, 4], [5, 1, 2, 3, 4, 5, 1]]
    gen = make_generator(vocab, eos_bias=0.5)
    together = gen.generate(prompts, max_new, num_beams=beams, length_penalty=1.0)
    alone = [make_generator(vocab, 0.5).generate([p], max_new, num_beams=beams)[0] for p in prompts]
    assert [(c.token_ids, c.score) for c in together] == [(c.token_ids, c.score) for c in alone]
    assert len({tuple(c.token_ids) for c in together}) == 3  # the prompts matter


def test_the_fake_decoder_catches_a_missing_cache_reorder():
    """Sanity check of the harness: without the reorder the answer changes."""
    vocab, max_new, beams = 5, 6, 3
    prompt = [1, 2]
    expected = numpy_beam_search(prompt, vocab, beams, max_new, 1.0, True, -3.0)[1]
    assert len(expected) == max_new
    gen = make_generator(vocab, -3.0)
    broken = FakeDecoder(beams, vocab, -3.0, PAD)
    broken.reorder = lambda parents: None
    gen._decoder = lambda batch, length: broken
    assert gen.generate([prompt], max_new, num_beams=beams)[0].token_ids != expected
