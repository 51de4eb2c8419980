"""The model worker: one thread owns the Generator and runs jobs from a bounded queue in batches.

MindSpore graph execution is not safe across concurrent calls, so exactly one thread calls
``Generator.generate``. Request handlers (on the asyncio loop) :meth:`ModelWorker.submit` a
:class:`Job`; the worker takes the oldest waiting job, gathers compatible waiting jobs (same
sampling, max_tokens, stop strings and stop rule; no seed) for up to ``batch_window`` seconds until
``max_batch`` rows are filled, pads the rows to a power of two so few shapes are compiled, and
runs them as one batch. Results and streamed text go back to each job's asyncio queue through
``loop.call_soon_threadsafe``. A cancelled job (its client went away) leaves the queue at once, or,
if it is running, its rows end at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from codegeex_ms.inference.sampling import SamplingParams

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit: the request should be retried later (HTTP 429)."""


class ShuttingDown(Exception):
    """The worker takes no new jobs: the server is draining (HTTP 503)."""


@dataclass(eq=False)
class Job:
    """One request: token ids per row (prompt i's n copies are rows i*n .. i*n+n-1) and options.

    Events on ``events``: ``("text", row, str)`` (streamed jobs only), then one ``("done",
    [Completion per row])`` or ``("error", message)``.
    """

    rows: list                      # token id lists
    max_tokens: int
    sampling: SamplingParams
    stop: tuple = ()
    stop_rule: Optional[str] = None  # language whose end-of-function rule ends a row
    seed: Optional[int] = None
    stream: bool = False
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def key(self) -> tuple:
        """Jobs with equal keys can share a batch; a seeded job only batches with itself."""
        s = self.sampling
        if s.temperature == 0:      # greedy: top-k/top-p do not matter
            s = SamplingParams()
        return (s, self.max_tokens, self.stop, self.stop_rule, id(self) if self.seed is not None else None)

    def post(self, event: tuple) -> None:
        """Thread-safe: put ``event`` on this job's queue (dropped if the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:        # loop closed: nobody is listening any more
            pass


@dataclass
class Stats:
    """Counters since start; ``batch_rows`` counts real (unpadded) rows over all batches."""

    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    failed: int = 0
    batches: int = 0
    batch_rows: int = 0
    completion_tokens: int = 0


def padded_rows(rows: int, max_batch: int) -> int:
    """Rows to run ``rows`` real rows with: the next power of two, capped at ``max_batch``
    (a single larger request runs at its own size)."""
    if rows >= max_batch:
        return rows
    p = 1
    while p < rows:
        p *= 2
    return min(p, max_batch)


class ModelWorker:
    """Runs jobs on ``generator`` in one thread; at most ``max_queue`` jobs wait.

    ``stop_rules(language) -> stop_fn or None`` builds the end-of-function rule for a job's
    ``stop_rule``.
    """

    def __init__(self, generator, *, max_batch: int = 8, max_queue: int = 64,
                 batch_window: float = 0.005, stop_rules: Callable = lambda language: None):
        if max_batch < 1 or max_queue < 1 or batch_window < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and batch_window >= 0")
        self.generator = generator
        self.max_batch, self.max_queue, self.batch_window = max_batch, max_queue, batch_window
        self.stop_rules = stop_rules
        self.stats = Stats()
        self.running_rows = 0
        self._pending: deque = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)

    # ------------------------------------------------------------------ called from the loop

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull or ShuttingDown instead of waiting."""
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"{len(self._pending)} requests are waiting (limit {self.max_queue})")
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop ``job`` if it waits; end its rows at the next token if it runs."""
        with self._cond:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                self.stats.cancelled += 1

    def close(self, timeout: Optional[float] = None) -> None:
        """Take no new jobs, finish the queued ones, and join the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def snapshot(self) -> dict:
        with self._cond:
            return {"waiting": len(self._pending), "running_rows": self.running_rows,
                    "max_queue": self.max_queue, "max_batch": self.max_batch,
                    "draining": self._closing, **vars(self.stats)}

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            finally:
                self.running_rows = 0

    def _next_batch(self) -> Optional[list]:
        """The oldest job plus compatible waiting jobs; None once closing with nothing queued."""
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            head = self._pending.popleft()
            batch, rows, key = [head], len(head.rows), head.key()
            deadline = time.monotonic() + self.batch_window
            while rows < self.max_batch and head.seed is None:
                for job in list(self._pending):
                    if job.key() == key and rows + len(job.rows) <= self.max_batch:
                        self._pending.remove(job)
                        batch.append(job)
                        rows += len(job.rows)
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            self.running_rows = rows
            return batch

    def _run_batch(self, batch: list) -> None:
        head = batch[0]
        owners = [(job, i) for job in batch for i in range(len(job.rows))]
        real = len(owners)
        size = real if head.seed is not None else padded_rows(real, self.max_batch)
        prompts = [job.rows[i] for job, i in owners] + [owners[0][0].rows[0]] * (size - real)

        def should_stop(row):
            if row >= real:
                return "padding"
            return "cancelled" if owners[row][0].cancelled else None

        def on_text(row, text):
            if row < real:
                job, i = owners[row]
                if job.stream and not job.cancelled:
                    job.post(("text", i, text))

        try:
            outs = self.generator.generate(
                prompts, head.max_tokens, head.sampling, stop=head.stop,
                stop_fn=self.stop_rules(head.stop_rule) if head.stop_rule else None,
                seed=head.seed, on_text=on_text if any(job.stream for job in batch) else None,
                should_stop=should_stop)
        except Exception as e:  # the model failed: tell every client, keep serving
            logger.exception("generation failed for a batch of %d rows", real)
            with self._cond:
                self.stats.failed += len(batch)
            for job in batch:
                job.post(("error", f"generation failed: {type(e).__name__}: {e}"))
            return
        start = 0
        with self._cond:
            self.stats.batches += 1
            self.stats.batch_rows += real
            for job in batch:
                mine = outs[start:start + len(job.rows)]
                start += len(job.rows)
                self.stats.completion_tokens += sum(len(c.token_ids) for c in mine)
                if job.cancelled:
                    self.stats.cancelled += 1
                else:
                    self.stats.completed += 1
                job.post(("done", mine))
