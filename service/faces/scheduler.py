"""The per-worker inference scheduler: a bounded number of pipeline runs at once, a bounded
queue in front of them, and a clear 503 when the queue is full.

Without it every request runs the pipeline at once in Starlette's thread pool (40 threads):
full-resolution decodes and model runs multiply with concurrency, threads fight over the
cores, and glibc keeps an arena per thread, so RSS grew to 1.8 GiB under 16 clients
(issue 15). Here at most `slots` pipeline runs proceed (sized so that slots x onnxruntime's
intra-op threads matches the CPUs), at most `queue_limit` more wait, and any request beyond
that is answered at once with 503 `overloaded` and a `Retry-After` header, which clients and
load balancers know how to back off from.

`MicroBatcher` is the cross-request half: pipeline runs in different slots hand their aligned
crops (or, for a detector with a batch axis, their letterboxed images) to one model call,
up to `max_batch` items, waiting at most `max_wait_ms` for company. On a CPU a batch costs what
its items cost one by one (docs/performance.md), so the default wait is 0: only work already
queued is joined. On a GPU one call for many faces is what keeps the device busy.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from service.errors import ErrorCode, ServiceError

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class SchedulerOptions:
    """`slots` 0 = auto (see `resolve_slots`); `queue_limit` requests may wait for a slot."""

    slots: int = 0
    queue_limit: int = 64
    retry_after_s: int = 1


def plan_slots(slots: int, intra_op_threads: int, workers: int = 1) -> tuple[int, int]:
    """(pipeline runs at once, onnxruntime intra-op threads per run) for one worker, so that
    their product is the CPUs this worker may use; 0 means auto for either.

    Auto gives one slot per CPU with one thread each: decoding and alignment run outside
    onnxruntime, so while one request decodes another's model run uses the other core, and
    two single-thread runs of det_500m (13.2 ms each) cost what two 2-thread runs do (7.5 ms).
    """
    cpus = max(1, len(os.sched_getaffinity(0)) // max(1, workers))
    if not slots:
        slots = max(1, cpus // intra_op_threads) if intra_op_threads else cpus
    threads = intra_op_threads or max(1, cpus // slots)
    return slots, threads


class InferenceScheduler:
    """Runs blocking pipeline calls in threads, `slots` at a time, with a bounded queue."""

    def __init__(self, slots: int, options: SchedulerOptions = SchedulerOptions()) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.slots = slots
        self.options = options
        self._semaphore = asyncio.Semaphore(slots)
        self._admitted = 0  # running + waiting

    @property
    def in_flight(self) -> int:
        """Requests running or waiting for a slot."""
        return self._admitted

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`function(*args, **kwargs)` in a worker thread once a slot is free; raises
        `ServiceError(OVERLOADED)` at once when `slots + queue_limit` are already admitted."""
        if self._admitted >= self.slots + self.options.queue_limit:
            raise ServiceError(
                ErrorCode.OVERLOADED,
                f"the server is busy ({self._admitted} requests in progress or queued); "
                f"retry after {self.options.retry_after_s} s",
                headers={"Retry-After": str(self.options.retry_after_s)},
            )
        self._admitted += 1
        try:
            async with self._semaphore:
                return await run_in_threadpool(function, *args, **kwargs)
        finally:
            self._admitted -= 1


@dataclass(frozen=True)
class BatchingOptions:
    """Most items per model call, and how long the first waits for others (0: no waiting)."""

    max_batch: int = 32
    max_wait_ms: float = 0.0


@dataclass
class _Job(Generic[Item, Result]):
    items: list[Item]
    future: Future = field(default_factory=Future)


class MicroBatcher(Generic[Item, Result]):
    """Joins the items that threads `submit` into calls of `run_batch` (items in, one result
    per item out, same order), run by one thread of its own; each caller gets its results."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        options: BatchingOptions = BatchingOptions(),
        name: str = "batcher",
    ) -> None:
        if options.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {options.max_batch}")
        self._run_batch = run_batch
        self.options = options
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.batch_sizes: list[int] = []  # of the last calls, for tests and debugging
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: list[Item]) -> list[Result]:
        """Blocks until the batch holding `items` has run; raises what `run_batch` raised."""
        if not items:
            return []
        job: _Job = _Job(list(items))
        self._jobs.put(job)
        return job.future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` plus queued jobs up to `max_batch` items or `max_wait_ms`; and whether
        the stop signal was seen."""
        jobs, count = [first], len(first.items)
        deadline = time.monotonic() + self.options.max_wait_ms / 1000.0
        while count < self.options.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                )
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.items)
        return jobs, False

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            items = [item for job in jobs for item in job.items]
            self.batch_sizes = [*self.batch_sizes[-99:], len(items)]
            try:
                results = self._run_batch(items)
            except BaseException as exc:  # every caller of this batch gets the error
                for job in jobs:
                    job.future.set_exception(exc)
            else:
                start = 0
                for job in jobs:
                    job.future.set_result(results[start : start + len(job.items)])
                    start += len(job.items)
            if stop:
                return
