"""The slot KV cache and the iteration-level scheduler on a tiny random model: a row in a busy
pool computes what it computes alone, finished rows free their slot at once, a steady workload
compiles nothing new, shared prompts prefill once with the same samples."""

import numpy as np
import pytest

import mindspore as ms

from codegeex_ms.inference.logits import Penalties, top_logprobs
from codegeex_ms.inference.sampling import SamplingParams, log_softmax
from codegeex_ms.inference.scheduler import Request, SlotScheduler
from codegeex_ms.model.kv_cache import SlotKVCache
from codegeex_ms.data.masks import causal_mask, positions
from test_generate import IdTokenizer, random_model

SAMPLED = SamplingParams(temperature=0.9, top_p=0.9)
VOCAB = 90          # real_vocab_size of random_model()


@pytest.fixture(scope="module")
def model():
    ms.set_context(mode=ms.GRAPH_MODE)
    return random_model()


def scheduler(model, slots, length=64):
    return SlotScheduler(SlotKVCache(model, slots, length, pad_id=0, prefill_tokens=128),
                         IdTokenizer(), eod=IdTokenizer.eod_id, real_vocab_size=VOCAB)


@pytest.fixture(scope="module")
def pools(model):
    """Schedulers by slot count, shared by the tests (each test leaves its scheduler idle), so
    each shape is compiled once per module."""
    made = {}

    def get(slots):
        if slots not in made:
            made[slots] = scheduler(model, slots)
        sched = made[slots]
        assert sched.idle
        sched.trace, sched.share_prompts = False, True
        return sched
    return get


def full_logits(model, seq, width=64):
    """Last-token logits of ``seq`` by a plain causal forward without any cache (right-padded to
    ``width`` so every call has one shape: the padding comes after, causally invisible)."""
    ids = np.zeros((1, width), np.int32)
    ids[0, :len(seq)] = seq
    out = model(ms.Tensor(ids), ms.Tensor(positions(1, width)), ms.Tensor(causal_mask(1, width)))
    return out.asnumpy()[0, len(seq) - 1]


def workload():
    """Requests of mixed prompt lengths, budgets and settings (seeded where sampled)."""
    rng = np.random.default_rng(5)
    out = []
    for i in range(7):
        prompt = [int(t) for t in rng.integers(1, VOCAB, size=int(rng.integers(2, 20)))]
        sampling = SAMPLED if i % 2 else SamplingParams()
        out.append(dict(prompt=prompt, max_new_tokens=int(rng.integers(3, 14)), sampling=sampling,
                        seed=100 + i, n=2 if i == 3 else 1))
    return out


def run_alone(sched, spec):
    req = Request(**spec)
    sched.submit(req)
    sched.run()
    return [c.token_ids for c in req.results]


def test_rows_in_a_busy_pool_equal_lone_runs_and_a_full_forward(model, pools):
    specs = workload()
    sched = pools(4)
    sched.trace = True
    reqs = [Request(**spec) for spec in specs]
    for req in reqs[:3]:
        sched.submit(req)
    sched.step()
    sched.step()
    for req in reqs[3:]:          # join a running batch between decode steps
        sched.submit(req)
    while not sched.idle:
        assert len(sched.active) <= 4
        sched.step()
    for spec, req in zip(specs, reqs):
        # Each row has its own cache row, positions and mask, so its logits equal a lone run's
        # to FP32 rounding of different batch shapes (~1e-6); tokens agree (no near-ties here).
        assert [c.token_ids for c in req.results] == run_alone(pools(1), spec), spec
    # The cached logits of a row that joined late equal a plain forward over its sequence; 1e-4
    # bounds FP32 rounding through three layers of this size (observed ~5e-6).
    req = reqs[5]
    seq = list(req.prompt)
    for step, logits in enumerate(req.trace_rows):
        assert np.abs(logits - full_logits(model, seq)).max() < 1e-4, step
        seq.append(req.results[0].token_ids[step])


def test_a_finished_row_frees_its_slot_for_the_next_step(pools):
    sched = pools(2)
    short = Request([3, 4, 5], 2)
    long = Request([6, 7], 10)
    late = Request([8, 9, 10, 11], 3)
    for req in (short, long, late):
        sched.submit(req)
    sched.step()                  # prefill short and long (token 1), decode (token 2): short ends
    assert short.results[0] is not None and len(short.results[0].token_ids) == 2
    assert len(sched.free) == 1 and len(sched.waiting) == 1 and long.results[0] is None
    freed = sched.free[0]
    sched.step()                  # late takes the freed slot before the next decode step
    assert [row.request for row in sched.active.values()].count(late) == 1
    assert next(s for s, row in sched.active.items() if row.request is late) == freed
    sched.run()
    assert len(long.results[0].token_ids) == 10 and len(late.results[0].token_ids) == 3


def test_a_steady_workload_compiles_no_new_graphs(model):
    sched = scheduler(model, 4)        # its own cells: count from zero
    for spec in workload():
        sched.submit(Request(**spec))
    sched.run()                   # warm-up: every bucket this workload needs
    shapes, graphs = set(sched.cache.shapes), sched.cache.compiled_graphs()
    assert graphs >= len({s for s in shapes if s[0] != "copy"})   # MindSpore compiled them
    rng = np.random.default_rng(9)
    for spec in workload():       # other prompts of the same length buckets, other seeds
        spec["prompt"] = [int(t) for t in rng.integers(1, VOCAB, size=len(spec["prompt"]))]
        spec["seed"] += 1000
        sched.submit(Request(**spec))
    sched.run()
    assert sched.cache.shapes == shapes
    assert sched.cache.compiled_graphs() == graphs


def test_samples_of_one_prompt_prefill_once_and_draw_as_if_alone(pools):
    prompt = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    shared = pools(8)
    before = (shared.stats.prefill_calls, shared.stats.prefill_tokens)
    req = Request(prompt, 6, SAMPLED, n=8, seed=42)
    shared.submit(req)
    shared.run()
    assert (shared.stats.prefill_calls - before[0], shared.stats.prefill_tokens - before[1]) == (1, len(prompt))
    separate = pools(8)
    separate.share_prompts = False
    before = separate.stats.prefill_tokens
    singles = [Request(prompt, 6, SAMPLED, seed=42, seed_offset=i) for i in range(8)]
    for r in singles:
        separate.submit(r)
    separate.run()
    assert separate.stats.prefill_tokens - before == 8 * len(prompt)
    assert [c.token_ids for c in req.results] == [r.results[0].token_ids for r in singles]
    assert len({tuple(c.token_ids) for c in req.results}) > 1       # the samples differ


def test_logprobs_and_penalties(pools):
    sched = pools(2)
    sched.trace = True
    plain = Request([3, 4, 5], 6, logprobs=3)
    sched.submit(plain)
    sched.run()
    for (token, logp, top), raw in zip(plain.results[0].logprobs, plain.trace_rows):
        ref = log_softmax(np.where(np.arange(raw.size) < VOCAB, raw, -np.inf)[None].astype(np.float64))[0]
        assert abs(logp - ref[token]) < 1e-9 and token == int(np.argmax(ref))    # greedy
        assert list(top) == list(np.argsort(-ref)[:3]) and abs(top[token] - logp) < 1e-12
    # A huge frequency penalty forbids repeating any generated token.
    pen = Request([3, 4, 5], 12, penalties=Penalties(frequency=1e4))
    sched.submit(pen)
    sched.run()
    toks = pen.results[0].token_ids
    assert len(set(toks)) == len(toks) == 12
    # Penalties by hand: presence once per seen token, frequency per occurrence.
    out = Penalties(presence=0.5, frequency=0.25).apply(np.zeros(5, np.float32), {1: 1, 3: 4})
    np.testing.assert_allclose(out, [0, -0.75, 0, -1.5, 0])
    assert top_logprobs(np.log(np.array([0.5, 0.3, 0.2])), 2, 0) == (pytest.approx(np.log(0.2)), {})


def test_a_prompt_sharing_a_prefix_with_a_slot_copies_it_and_computes_the_rest(model):
    sched = SlotScheduler(SlotKVCache(model, 3, 64, pad_id=0, prefill_tokens=128), IdTokenizer(),
                          eod=IdTokenizer.eod_id, real_vocab_size=VOCAB, min_prefix=4)
    sched.trace = True
    rng = np.random.default_rng(3)
    header = [int(t) for t in rng.integers(1, VOCAB, size=21)]
    first = Request(header + [5, 6, 7], 5)
    sched.submit(first)
    sched.run()
    first_slot = next(iter(sched.held))
    assert sched.stats.prefix_tokens == 0
    # A freed slot still holds the header: the next prompt goes there and copies 21 tokens ...
    second = Request(header + [8, 9, 10, 11, 12, 13], 4)
    sched.submit(second)
    sched.step()
    assert next(iter(sched.active)) == first_slot
    assert sched.stats.prefix_tokens == 21
    # ... and, while it runs, a third prompt copies the header plus 3 tokens from its slot.
    third = Request(header + [8, 9, 10, 40], 4)
    sched.submit(third)
    sched.run()
    assert sched.stats.prefix_tokens == 21 + 24
    assert sched.stats.prefill_tokens == 24 + 6 + 1
    # Logits from the copied prefix equal a plain forward over the whole sequence, at the
    # prefill and at every decode step after it (1e-4: FP32 rounding, as above).
    for req in (second, third):
        seq = list(req.prompt)
        for step, logits in enumerate(req.trace_rows):
            assert np.abs(logits - full_logits(model, seq)).max() < 1e-4, step
            seq.append(req.results[0].token_ids[step])


def test_prefill_from_a_prefix_in_the_same_row_and_another(model):
    cache = SlotKVCache(model, 2, 64, pad_id=0)
    rng = np.random.default_rng(4)
    a = [int(t) for t in rng.integers(1, VOCAB, size=30)]
    b = a[:20] + [int(t) for t in rng.integers(1, VOCAB, size=7)]
    c = a[:25] + [1, 2]
    cache.prefill([a], [[0]])
    # b reads a's first 20 tokens from row 0 and lands in row 1; c reads row 0 and overwrites it.
    logits = cache.prefill([b, c], [[1], [0]], [(0, 20), (0, 25)])
    for i, seq in enumerate((b, c)):
        assert np.abs(logits[i] - full_logits(model, seq)).max() < 1e-4
    with pytest.raises(ValueError, match="prefix"):
        cache.prefill([b], [[1]], [(0, len(b))])
