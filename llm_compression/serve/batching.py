"""Dynamic batching: requests that arrive together share one model call, run off the event loop.

A ``Batcher`` owns a bounded queue of jobs (one per request, each a list of items) and one worker
task. The worker takes the first job, then keeps taking jobs for at most ``max_wait`` seconds or
until ``max_batch`` items are gathered, runs ``fn(items)`` in its own single-thread executor (the
model's compute never blocks the event loop, and one model runs one batch at a time), and hands
each job its slice of the results. A full queue raises ``QueueFull`` at once (the route answers
503 with Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics


class QueueFull(Exception):
    """A model's queue holds ``max_queue`` requests already (``model`` names it)."""

    def __init__(self, model: str, max_queue: int) -> None:
        super().__init__(f"the {model} queue is full ({max_queue} requests)")
        self.model = model


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gather jobs for one model into batches of at most ``max_batch`` items."""

    def __init__(self, name: str, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 32,
                 max_wait: float = 0.005, max_queue: int = 256,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.name, self.fn = name, fn
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._carry: _Job | None = None

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, items: list[Any]) -> list[Any]:
        """Results of ``fn`` for ``items`` (in order), computed in a batch with other requests."""
        self._start()
        assert self._queue is not None
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(self.name, self.max_queue) from None
        return await job.future

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue(self.max_queue)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            live = [j for j in jobs if not j.future.done()]  # cancelled by a timeout: skip
            if live:
                await self._compute(live)

    async def _gather(self) -> list[_Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, count = [first], len(first.items)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = (
                    self._queue.get_nowait()
                    if left <= 0
                    else await asyncio.wait_for(self._queue.get(), left)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if count + len(job.items) > self.max_batch:
                self._carry = job  # starts the next batch: a batch never exceeds max_batch
                break
            jobs.append(job)
            count += len(job.items)
        return jobs

    async def _compute(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._pool, self.fn, items)
        except Exception as e:
            if len(jobs) > 1:  # one request's bad input must not fail the others: run each alone
                for job in jobs:
                    await self._compute([job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(e)
            return
        if self.metrics is not None:
            self.metrics.observe_batch(self.name, len(items))
        start = 0
        for job in jobs:
            part = list(results[start : start + len(job.items)])
            start += len(job.items)
            if not job.future.done():
                job.future.set_result(part)
