"""Prompt-lookup speculative decoding: drafts by hand, greedy identical token for token to plain
greedy, and sampled tokens distributed as without speculation (chi-square tests)."""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.inference.sampling import SamplingParams, filtered_probs
from codegeex_ms.inference.scheduler import Request, SlotScheduler
from codegeex_ms.inference.speculative import PromptLookup, accept_draft, propose
from codegeex_ms.model.kv_cache import SlotKVCache
from codegeex_ms.data.masks import causal_mask, positions
from test_generate import IdTokenizer, random_model

VOCAB = 90
# Upper 0.1 % points of the chi-square distribution by degrees of freedom (standard tables).
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12}


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple:
    """(statistic, degrees of freedom) of observed ``counts`` against ``probs`` (cells with
    probability > 0)."""
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was drawn"
    expected = counts.sum() * probs[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum()), int(keep.sum()) - 1


@pytest.fixture(scope="module")
def model():
    ms.set_context(mode=ms.GRAPH_MODE)
    return random_model(seed=3)


def scheduler(model, slots, spec=None):
    return SlotScheduler(SlotKVCache(model, slots, 64, pad_id=0), IdTokenizer(),
                         eod=IdTokenizer.eod_id, real_vocab_size=VOCAB, speculative=spec)


def test_drafts_follow_the_latest_longest_ngram():
    ctx = np.array([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3])
    assert propose(ctx, 3) == [7, 8, 5]          # "2 3" last seen before 7 8 5 (longest n = 2)
    assert propose(ctx, 2, max_ngram=1) == [7, 8]
    assert propose(np.array([4, 5, 6]), 3) == []
    assert propose(np.array([5, 6, 5]), 4) == [6, 5]


def test_acceptance_rule_keeps_the_distribution():
    rng = np.random.default_rng(0)
    p = np.array([0.05, 0.4, 0.0, 0.25, 0.2, 0.1])
    for draft in (1, 2, 5):                       # likely, impossible and unlikely drafts
        counts = np.bincount([accept_draft(p, draft, rng) for _ in range(20000)], minlength=p.size)
        stat, dof = chi_square(counts, p)
        assert stat < CHI2_999[dof], (draft, counts)


def test_greedy_is_identical_token_for_token(model):
    rng = np.random.default_rng(1)
    prompts = []
    for _ in range(4):                            # repetitive prompts, as code copies identifiers
        motif = [int(t) for t in rng.integers(1, VOCAB, size=5)]
        prompts.append((motif * 4)[: int(rng.integers(8, 20))])
    plain, spec = scheduler(model, 4), scheduler(model, 4, PromptLookup(draft_tokens=4))
    outs = []
    for sched in (plain, spec):
        reqs = [Request(p, 24) for p in prompts]
        for r in reqs:
            sched.submit(r)
        sched.run()
        outs.append([r.results[0].token_ids for r in reqs])
    assert outs[0] == outs[1]
    assert spec.stats.spec_accepted > 0 and spec.stats.decode_steps < plain.stats.decode_steps


def full_probs(model, seq, params, width=64):
    ids = np.zeros((1, width), np.int32)
    ids[0, :len(seq)] = seq
    logits = model(ms.Tensor(ids), ms.Tensor(positions(1, width)),
                   ms.Tensor(causal_mask(1, width))).asnumpy()[0, len(seq) - 1]
    logits = np.where(np.arange(logits.size) < VOCAB, logits, -np.inf)
    return filtered_probs(logits[None], params)[0]


class FixedDraft(PromptLookup):
    """Always drafts ``tokens``: lets the test choose drafts that are sometimes right."""

    def __init__(self, tokens):
        super().__init__(draft_tokens=len(tokens))
        self.tokens = tokens

    def draft(self, context, limit):
        return self.tokens[:limit]


def test_sampled_tokens_follow_the_model_distribution(model):
    """Token 2 comes from a verification step (token 1 from the prefill): its joint with token 1
    must match the model's own probabilities, computed here by plain forwards."""
    params = SamplingParams(temperature=1.0, top_k=2)
    prompt = [5, 17, 33, 2, 61, 8]
    p1 = full_probs(model, prompt, params)
    likely = full_probs(model, prompt + [int(np.argmax(p1))], params)
    # The draft is the likelier token after the likelier first token: accepted often there,
    # rejected (residual draw) otherwise.
    sched = scheduler(model, 8, FixedDraft([int(np.argmax(likely))] * 2))
    req = Request(prompt, 3, params, n=800, seed=9)
    sched.submit(req)
    sched.run()
    assert 0 < sched.stats.spec_accepted < sched.stats.spec_proposed    # both branches ran
    cells, probs = {}, []
    for t1 in np.flatnonzero(p1):
        p2 = full_probs(model, prompt + [int(t1)], params)
        for t2 in np.flatnonzero(p2):
            cells[(int(t1), int(t2))] = len(probs)
            probs.append(p1[t1] * p2[t2])
    counts = np.zeros(len(probs))
    for c in req.results:
        counts[cells[tuple(c.token_ids[:2])]] += 1
    stat, dof = chi_square(counts, np.array(probs))
    assert stat < CHI2_999[dof], (counts, probs)
