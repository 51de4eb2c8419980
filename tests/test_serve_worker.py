"""The model worker in-process with a tiny random model: continuous batching, queue limits,
cancellation."""

import asyncio

import pytest

import mindspore as ms

from codegeex_ms.config import load_config
from codegeex_ms.inference.generator import Generator
from codegeex_ms.inference.sampling import SamplingParams
from codegeex_ms.model import CodeGeeX
from codegeex_ms.env.paths import REPO_ROOT
from codegeex_ms.serve.schemas import GenerationOptions
from codegeex_ms.serve.worker import DoneEvent, ErrorEvent, Job, ModelWorker, QueueFull, TextEvent
from test_serve_support import TINY, require_shared_data

GREEDY = SamplingParams(0.0)


@pytest.fixture(scope="module")
def generator():
    require_shared_data()
    from codegeex_ms.data.tokenizer import CodeGeeXTokenizer
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(str(REPO_ROOT / "ascend_configs" / "tiny.yaml"), TINY)
    ms.set_seed(0)
    return Generator(CodeGeeX(cfg.model), CodeGeeXTokenizer.from_dir(None), cfg.inference.max_length,
                     max_decoders=8)


async def outcome(job, on_text=None):
    """The job's final event; ``on_text(job, row, text)`` sees streamed text first."""
    while True:
        event = await job.events.get()
        if isinstance(event, TextEvent):
            if on_text:
                on_text(job, event.row, event.text)
            continue
        return event


def ids(generator, *texts):
    return [generator.tokenizer.encode(t) for t in texts]


def test_jobs_with_any_settings_share_the_pool_with_their_lone_results(generator):
    prompts = ids(generator, "def add(a, b):", "import os\n", "class Point:\n    def __init__(self")
    sampled = SamplingParams(0.9, 0, 0.95)
    alone_greedy = [generator.generate([p], 12)[0].token_ids for p in prompts]
    alone_seeded = [c.token_ids for c in generator.generate([prompts[0]] * 2, 9, sampled, seed=3)]

    async def main():
        worker = ModelWorker(generator.slot_scheduler(4), max_queue=8)
        jobs = [Job(rows=[p], options=GenerationOptions(max_tokens=12, sampling=GREEDY, stream=True)) for p in prompts]
        jobs.append(Job(rows=[prompts[0]] * 2, options=GenerationOptions(max_tokens=9, sampling=sampled, seed=3)))
        for job in jobs:
            worker.submit(job)
        streamed = {id(job): "" for job in jobs}

        def collect(job, row, text):
            streamed[id(job)] += text

        worker.start()
        events = [await outcome(job, collect) for job in jobs]
        worker.close()
        return worker, jobs, events, streamed

    worker, jobs, events, streamed = asyncio.run(main())
    assert [type(e) for e in events] == [DoneEvent] * 4
    for job, event, want in zip(jobs, events, alone_greedy):
        # Rows of a pool are independent (own cache row, positions and mask): the logits equal
        # the lone run's to float rounding (~1e-6), so greedy tokens agree.
        assert event.completions[0].token_ids == want
        assert streamed[id(job)] == event.completions[0].text
    # The seeded job (5 rows with the others > 4 slots: it waited for a free slot) draws the
    # same samples as Generator.generate with that seed: row j samples with [seed, j].
    assert [c.token_ids for c in events[3].completions] == alone_seeded
    assert worker.stats.completed == 4
    assert worker.stats.completion_tokens == 36 + sum(len(c.token_ids) for c in events[3].completions)
    assert worker.stats.batch_rows <= 4 * worker.stats.batches     # never more rows than slots


def test_queue_limit_cancellation_failure_and_drain(generator):
    [p] = ids(generator, "def main():\n")

    async def main():
        worker = ModelWorker(generator.slot_scheduler(1), max_queue=3)
        broken = Job(rows=[[7] * 250], options=GenerationOptions(max_tokens=10, sampling=GREEDY))   # 250 + 10 > 256 positions
        long = Job(rows=[p], options=GenerationOptions(max_tokens=200, sampling=GREEDY, stream=True, stop=("never-seen",)))
        dropped = Job(rows=[p], options=GenerationOptions(max_tokens=4, sampling=SamplingParams(0.5)))
        for job in (broken, long, dropped):
            worker.submit(job)
        with pytest.raises(QueueFull, match=r"3 requests are waiting \(limit 3\)"):
            worker.submit(Job(rows=[p], options=GenerationOptions(max_tokens=4, sampling=GREEDY)))
        worker.cancel(dropped)                                      # leaves the queue at once
        assert worker.snapshot()["waiting"] == 2
        worker.start()
        failed = await outcome(broken)
        ended = await outcome(long, on_text=lambda job, row, text: worker.cancel(job))
        after = Job(rows=[p], options=GenerationOptions(max_tokens=3, sampling=GREEDY))
        worker.submit(after)
        worker.close()       # no new jobs, but the queued one still runs
        return worker, failed, ended, await outcome(after)

    worker, failed, ended, after = asyncio.run(main())
    assert isinstance(failed, ErrorEvent) and "250 prompt tokens + max_new_tokens=10" in failed.message
    assert isinstance(ended, DoneEvent) and ended.completions[0].finish_reason == "cancelled"
    assert 1 <= len(ended.completions[0].token_ids) < 200         # stopped soon after cancelling
    assert isinstance(after, DoneEvent) and len(after.completions[0].token_ids) == 3
    s = worker.stats
    assert (s.rejected, s.cancelled, s.failed, s.completed) == (1, 2, 1, 1)
