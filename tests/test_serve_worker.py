"""The model worker in-process with a tiny random model: batching, queue limits, cancellation."""

import asyncio

import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.inference.generator import Generator
from codegeex_ms.inference.sampling import SamplingParams
from codegeex_ms.model import CodeGeeX
from codegeex_ms.paths import REPO_ROOT
from codegeex_ms.serve.worker import Job, ModelWorker, QueueFull
from test_serve_support import TINY, require_shared_data

GREEDY = SamplingParams(0.0)


@pytest.fixture(scope="module")
def generator():
    require_shared_data()
    from codegeex_ms.tokenizer import CodeGeeXTokenizer
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / "tiny.yaml"), TINY)
    ms.set_seed(0)
    return Generator(CodeGeeX(cfg.model), CodeGeeXTokenizer.from_dir(None), cfg.inference.max_length,
                     max_decoders=8)


async def outcome(job, on_text=None):
    """The job's final event; ``on_text(job, row, text)`` sees streamed text first."""
    while True:
        event = await job.events.get()
        if event[0] == "text":
            if on_text:
                on_text(job, event[1], event[2])
            continue
        return event


def ids(generator, *texts):
    return [generator.tokenizer.encode(t) for t in texts]


def test_compatible_jobs_share_one_padded_batch_with_the_same_greedy_tokens(generator):
    prompts = ids(generator, "def add(a, b):", "import os\n", "class Point:\n    def __init__(self")
    alone = [generator.generate([p], 12)[0].token_ids for p in prompts]

    async def main():
        worker = ModelWorker(generator, max_batch=4, batch_window=0.0)
        jobs = [Job(rows=[p], max_tokens=12, sampling=GREEDY, stream=True) for p in prompts]
        for job in jobs:          # all queued before the worker starts: one batch, deterministically
            worker.submit(job)
        streamed = {id(job): "" for job in jobs}

        def collect(job, row, text):
            streamed[id(job)] += text

        worker.start()
        events = [await outcome(job, collect) for job in jobs]
        worker.close()
        return worker, jobs, events, streamed

    worker, jobs, events, streamed = asyncio.run(main())
    assert worker.stats.batches == 1 and worker.stats.batch_rows == 3     # 3 rows, run as 4
    assert generator.timing.compiles[-1][0] == 4
    for job, event, want in zip(jobs, events, alone):
        assert event[0] == "done" and len(event[1]) == 1
        # Left padding is masked out, so batched logits equal the lone run's to float rounding
        # (~1e-6, see test_generate); greedy tokens agree unless two logits tie that closely.
        assert event[1][0].token_ids == want
        assert streamed[id(job)] == event[1][0].text
    assert worker.stats.completed == 3 and worker.stats.completion_tokens == 36


def test_only_compatible_jobs_batch_and_seeded_jobs_are_reproducible(generator):
    [p, q] = ids(generator, "int main() {", "fn main() {")
    sampled = SamplingParams(0.9, 0, 0.95)

    async def main():
        worker = ModelWorker(generator, max_batch=8, batch_window=0.0)
        jobs = [Job(rows=[p], max_tokens=6, sampling=SamplingParams(0.0, 5, 0.5)),   # greedy: top-k/p moot
                Job(rows=[q], max_tokens=5, sampling=GREEDY),                       # other max_tokens
                Job(rows=[q], max_tokens=6, sampling=GREEDY),                       # joins the first
                Job(rows=[p, p], max_tokens=6, sampling=sampled, seed=3),
                Job(rows=[p, p], max_tokens=6, sampling=sampled, seed=3),
                Job(rows=[q], max_tokens=6, sampling=GREEDY, stop=("x",))]          # other stop strings
        for job in jobs:
            worker.submit(job)
        worker.start()
        events = [await outcome(job) for job in jobs]
        worker.close()
        return worker, events

    worker, events = asyncio.run(main())
    assert [e[0] for e in events] == ["done"] * 6
    assert worker.stats.batches == 5 and worker.stats.batch_rows == 8
    first, short, joined, seeded_a, seeded_b, _ = [e[1] for e in events]
    assert len(short[0].token_ids) == 5 and len(joined[0].token_ids) == 6
    assert [c.token_ids for c in seeded_a] == [c.token_ids for c in seeded_b]
    assert seeded_a[0].token_ids != seeded_a[1].token_ids      # the two rows draw differently


def test_queue_limit_cancellation_failure_and_drain(generator):
    [p] = ids(generator, "def main():\n")

    async def main():
        worker = ModelWorker(generator, max_batch=2, max_queue=3, batch_window=0.0)
        broken = Job(rows=[[7] * 250], max_tokens=10, sampling=GREEDY)   # 250 + 10 > 256 positions
        long = Job(rows=[p], max_tokens=200, sampling=GREEDY, stream=True, stop=("never-seen",))
        dropped = Job(rows=[p], max_tokens=4, sampling=SamplingParams(0.5))
        for job in (broken, long, dropped):
            worker.submit(job)
        with pytest.raises(QueueFull, match=r"3 requests are waiting \(limit 3\)"):
            worker.submit(Job(rows=[p], max_tokens=4, sampling=GREEDY))
        worker.cancel(dropped)                                      # leaves the queue at once
        assert worker.snapshot()["waiting"] == 2
        worker.start()
        failed = await outcome(broken)
        ended = await outcome(long, on_text=lambda job, row, text: worker.cancel(job))
        after = Job(rows=[p], max_tokens=3, sampling=GREEDY)
        worker.submit(after)
        worker.close()       # no new jobs, but the queued one still runs
        return worker, failed, ended, await outcome(after)

    worker, failed, ended, after = asyncio.run(main())
    assert failed[0] == "error" and "PromptTooLongError" in failed[1]
    assert ended[0] == "done" and ended[1][0].finish_reason == "cancelled"
    assert 1 <= len(ended[1][0].token_ids) < 200                  # stopped soon after cancelling
    assert after[0] == "done" and len(after[1][0].token_ids) == 3
    s = worker.stats
    assert (s.rejected, s.cancelled, s.failed, s.completed) == (1, 2, 1, 1)
