"""The model worker: one thread owns a slot scheduler and runs requests by continuous batching.

MindSpore graph execution is not safe across concurrent calls, so exactly one thread drives the
:class:`~codegeex_ms.inference.scheduler.SlotScheduler`. Request handlers (on the asyncio loop)
:meth:`ModelWorker.submit` a :class:`Job`; between decode steps the worker moves waiting jobs
into free slots (oldest first, so no job starves), and a finished row frees its slot for the
next step. Jobs with any settings share the pool: sampling, stop strings, seeds and penalties
are per row. Results and streamed text go back to each job's asyncio queue through
``loop.call_soon_threadsafe``. A cancelled job (its client went away) leaves the queue at once,
or, if it is running, its rows end at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from codegeex_ms.inference.scheduler import Request
from codegeex_ms.serve.schemas import GenerationOptions

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit: the request should be retried later (HTTP 429)."""


class ShuttingDown(Exception):
    """The worker takes no new jobs: the server is draining (HTTP 503)."""


@dataclass(frozen=True)
class TextEvent:
    """New text of row ``row`` (streamed jobs only)."""
    row: int
    text: str


@dataclass(frozen=True)
class DoneEvent:
    """The job's last event when it ran: one ``Completion`` per row."""
    completions: list


@dataclass(frozen=True)
class ErrorEvent:
    """The job's last event when it failed."""
    message: str


@dataclass(eq=False)
class Job:
    """One request: token ids per row (prompt i's n copies are rows i*n .. i*n+n-1) and options.

    Events on ``events``: :class:`TextEvent` (streamed jobs only), then one :class:`DoneEvent` or
    :class:`ErrorEvent`. Row j of a seeded job samples with the
    generator ``[seed, j]``, whichever rows it shares the pool with.
    """

    rows: list                      # token id lists
    options: GenerationOptions      # its n is already applied to rows
    stop_rule: Optional[str] = None  # language whose end-of-function rule ends a row
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def post(self, event: TextEvent | DoneEvent | ErrorEvent) -> None:
        """Thread-safe: put ``event`` on this job's queue (dropped if the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:        # loop closed: nobody is listening any more
            pass


@dataclass
class Stats:
    """Counters since start; ``batch_rows`` counts the rows of every decode step (``batches``)."""

    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    failed: int = 0
    batches: int = 0
    batch_rows: int = 0
    completion_tokens: int = 0


class ModelWorker:
    """Runs jobs on a slot scheduler of ``max_batch`` slots in one thread; at most ``max_queue``
    jobs wait for slots.

    ``scheduler`` is a :class:`~codegeex_ms.inference.scheduler.SlotScheduler`;
    ``stop_rules(language) -> stop_fn or None`` builds the end-of-function rule for a job's
    ``stop_rule``.
    """

    def __init__(self, scheduler, *, max_queue: int = 64,
                 stop_rules: Callable = lambda language: None):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.scheduler = scheduler
        self.max_batch, self.max_queue = scheduler.cache.slots, max_queue
        self.stop_rules = stop_rules
        self.stats = Stats()
        self.running_rows = 0
        self._pending: deque = deque()
        self._running = {}                 # job -> its scheduler requests
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
            for req in self._running.get(job, ()):
                req.cancelled = True        # rows not yet admitted never start
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
        sched = self.scheduler
        while True:
            with self._cond:
                while not self._pending and sched.idle:
                    if self._closing:
                        return
                    self._cond.wait()
                # Jobs enter the scheduler only while slots are free, so the rest still count
                # as waiting (and can be cancelled or rejected) here.
                while self._pending and len(sched.free) > len(sched.waiting):
                    self._start(self._pending.popleft())
            if sched.idle:
                continue
            try:
                sched.step()
            except Exception as e:  # the model failed: tell the running clients, keep serving
                logger.exception("decode step failed")
                self._fail_running(f"generation failed: {type(e).__name__}: {e}")
                continue
            with self._cond:
                self.running_rows = len(sched.active)
                if sched.active:
                    self.stats.batches += 1
                    self.stats.batch_rows += len(sched.active)

    def _start(self, job: Job) -> None:
        """Turn ``job`` into scheduler requests (a run of equal rows is one request of n)."""
        stop_fn = self.stop_rules(job.stop_rule) if job.stop_rule else None
        outs = [None] * len(job.rows)
        requests = []
        left = [0]

        def finished(first, results):
            outs[first:first + len(results)] = results
            left[0] -= 1
            if left[0] == 0:
                self._done(job, outs)

        first = 0
        while first < len(job.rows):
            n = 1
            while first + n < len(job.rows) and job.rows[first + n] == job.rows[first]:
                n += 1
            opts = job.options
            requests.append(Request(
                job.rows[first], opts.max_tokens, opts.sampling, n=n, seed=opts.seed, seed_offset=first,
                stop=opts.stop, stop_fn=stop_fn, penalties=opts.penalties, logprobs=opts.logprobs,
                on_text=(lambda i, text, first=first: job.post(TextEvent(first + i, text)))
                if opts.stream else None,
                on_done=lambda results, first=first: finished(first, results),
                should_stop=lambda _i: "cancelled" if job.cancelled else None))
            first += n
        left[0] = len(requests)
        try:
            for req in requests:
                self.scheduler.check(req)
        except ValueError as e:
            self.stats.failed += 1
            job.post(ErrorEvent(f"generation failed: {e}"))
            return
        self._running[job] = requests
        for req in requests:
            self.scheduler.submit(req)

    def _done(self, job: Job, outs: list) -> None:
        with self._cond:
            self._running.pop(job, None)
            self.stats.completion_tokens += sum(len(c.token_ids) for c in outs)
            if job.cancelled:
                self.stats.cancelled += 1
            else:
                self.stats.completed += 1
        job.post(DoneEvent(outs))

    def _fail_running(self, message: str) -> None:
        self.scheduler.reset()
        with self._cond:
            jobs = list(self._running)
            self._running.clear()
            self.stats.failed += len(jobs)
            self.running_rows = 0
        for job in jobs:
            job.post(ErrorEvent(message))
