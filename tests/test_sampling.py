"""Host sampling against brute force: the nucleus equals the stable-argsort definition on random,
tied and peaked distributions (each path of its candidate search), the draws equal a full-width
cumulative sum bit for bit, and they are distributed as the filtered probabilities (chi-square)."""

import numpy as np
import pytest

from codegeex_ms.inference.logits import choose
from codegeex_ms.inference.sampling import SamplingParams, _nucleus, filtered_probs, sample_rows
from test_speculative import CHI2_999, chi_square


def reference_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The definition, row by row: float64 softmax of logits / T over the top-k, then the
    smallest most likely set (stable order: lower ids first among equals) whose mass reaches
    top_p, renormalised."""
    out = np.zeros(logits.shape)
    for r, row in enumerate(logits.astype(np.float64)):
        x = row / params.temperature
        if params.top_k and params.top_k < x.size:
            x = np.where(x < np.sort(x)[-params.top_k], -np.inf, x)
        p = np.exp(x - x.max())
        p = p / p.sum()
        if params.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            keep = np.zeros(p.size, bool)
            keep[order[before < params.top_p]] = True
            p = np.where(keep, p, 0.0)
            p = p / p.sum()
        out[r] = p
    return out


def reference_draw(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF over the whole vocabulary: the first id whose cumulative probability reaches
    u, never past the last id of probability > 0."""
    picks = (np.cumsum(probs, axis=-1) < u[:, None]).sum(axis=-1)
    last = np.array([np.flatnonzero(row > 0)[-1] for row in probs])
    return np.minimum(picks, last)


def distributions(rng, count):
    """(logits [B, V] float32, params): flat and peaked, tied (rounded) and with -inf padding."""
    for trial in range(count):
        vocab = int(rng.choice([7, 300, 5000, 52224]))
        rows = int(rng.integers(1, 4))
        scale = float(rng.choice([0.1, 1.0, 3.0, 8.0, 30.0]))
        logits = (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits, 1)           # many equal probabilities
        if trial % 4 == 0:
            logits[:, vocab - vocab // 8:] = -np.inf
        yield logits, SamplingParams(float(rng.choice([0.2, 0.8, 1.0, 1.5])),
                                     int(rng.choice([0, 0, 0, 5, 50])),
                                     float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.999, 1 - 1e-10, 1.0])))


def test_nucleus_equals_the_stable_argsort_definition():
    rng = np.random.default_rng(0)
    for trial in range(120):
        size = int(rng.choice([5, 300, 4000, 52224]))
        x = rng.standard_normal(size) * rng.choice([0.1, 1.0, 5.0, 30.0])
        if trial % 3 == 0:
            x = np.round(x, 1)            # many equal probabilities: lower ids go first
        if trial % 5 == 0:
            x[rng.integers(0, size, size // 3)] = x.max()      # ties among the most likely
        p = np.exp(x - x.max())
        p /= p.sum()
        top_p = float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.999, 1 - 1e-10]))
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        np.testing.assert_array_equal(_nucleus(p, top_p), np.sort(order[before < top_p]))
    # Two equal most likely tokens and top_p reached by the first: the lower id only.
    np.testing.assert_array_equal(_nucleus(np.array([0.1, 0.4, 0.4, 0.1]), 0.3), [1])
    # Ties at the cut among the likely candidates (p >= 1e-3) with a light tail: the cut is
    # found among the candidates, the lower ids of the tie kept.
    p = np.full(2000, 0.01 / 1990)
    p[[7, 3, 1500, 11, 900]] = [0.3, 0.3, 0.13, 0.13, 0.13]
    np.testing.assert_array_equal(_nucleus(p / p.sum(), 0.7), [3, 7, 11])


def test_filtered_probs_and_draws_equal_the_full_width_reference_bit_for_bit():
    rng = np.random.default_rng(1)
    for logits, params in distributions(rng, 150):
        probs = reference_probs(logits, params)
        np.testing.assert_array_equal(filtered_probs(logits, params), probs)
        u = rng.random(logits.shape[0])
        np.testing.assert_array_equal(sample_rows(logits, params, u), reference_draw(probs, u))
        # u exactly at a cumulative value and one ulp above: only equal sums agree on both.
        cdf = np.cumsum(probs, axis=-1)
        at = cdf[np.arange(len(u)), [rng.choice(np.flatnonzero(row > 0)) for row in probs]]
        for u in (at, np.nextafter(at, 2.0)):
            u = np.minimum(u, 1 - 2 ** -53)
            np.testing.assert_array_equal(sample_rows(logits, params, u), reference_draw(probs, u))
    # u at the edges of [0, 1) and exactly at a cumulative boundary: never a token of mass 0.
    logits = np.log(np.array([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0]]))
    for u in (0.0, 0.5, 0.75, 1 - 2 ** -53):
        token = int(sample_rows(logits, SamplingParams(1.0, 0, 0.9), np.array([u]))[0])
        assert token in (1, 3, 4), u


def test_choose_draws_from_each_rows_generator_with_the_filtered_distribution():
    rng = np.random.default_rng(2)
    logits = np.log(np.array([[0.3, 0.2, 0.2, 0.1, 0.08, 0.07, 0.05],
                              [0.02, 0.5, 0.02, 0.3, 0.06, 0.05, 0.05]]))
    params = SamplingParams(0.8, 0, 0.9)
    probs = reference_probs(logits, params)
    draws = 20000
    rngs = [np.random.default_rng([7, 0]), np.random.default_rng([7, 1])]
    picks = np.array([choose(logits, [params, params], rngs) for _ in range(draws)])
    # Each row used its own generator once per draw: the same tokens as drawing alone.
    alone = np.random.default_rng([7, 1])
    expect = [reference_draw(probs[1:], np.array([alone.random()]))[0] for _ in range(draws)]
    np.testing.assert_array_equal(picks[:, 1], expect)
    for r in range(2):
        stat, dof = chi_square(np.bincount(picks[:, r], minlength=probs.shape[1]), probs[r])
        assert stat < CHI2_999[dof], (r, stat)
    # A greedy row between sampled ones takes the argmax and draws nothing.
    greedy = np.random.default_rng(3)
    state = greedy.bit_generator.state
    out = choose(logits[[1, 0]], [SamplingParams(), params], [greedy, np.random.default_rng(4)])
    assert out[0] == 1 and greedy.bit_generator.state == state


@pytest.mark.parametrize("top_p", [0.5, 0.95])
def test_peaked_rows_of_a_realistic_shape(top_p):
    """Logits like a trained model's (a few likely tokens, a long tail over 52k): the candidate
    path decides, and agrees with the reference."""
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((16, 52224)) * 2.0).astype(np.float32)
    logits[np.arange(16)[:, None], rng.integers(0, 52224, (16, 6))] += 14.0
    params = SamplingParams(0.8, 0, top_p)
    tempered = reference_probs(logits, SamplingParams(0.8, 0, 1.0))
    assert (np.where(tempered >= 1e-3, tempered, 0).sum(axis=-1) > top_p + 1e-6).all()
    probs = reference_probs(logits, params)
    u = rng.random(16)
    np.testing.assert_array_equal(sample_rows(logits, params, u), reference_draw(probs, u))
