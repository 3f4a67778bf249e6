"""The per-worker admission control: a bounded number of pipeline runs at once, a bounded
queue in front of them, and a clear 503 `overloaded` + `Retry-After` when the queue is full.

Without it every request runs the pipeline at once in Starlette's thread pool (40 threads):
full-resolution decodes and model runs multiply with concurrency, threads fight over the
cores, and glibc keeps an arena per thread, so RSS grew to 1.8 GiB under 16 clients. Here at
most `slots` pipeline runs proceed (sized so that slots x onnxruntime's intra-op threads matches
the CPUs), at most `queue_limit` more wait, and any request beyond that is answered at once with
503 `overloaded` and a `Retry-After` header, which clients and load balancers know how to back
off from. Answering "come back later" is an HTTP concern, so this lives at the edge; the
cross-request batching of model calls is the pipeline's (`service.faces.batching`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from service.errors import ErrorCode, ServiceError

P = ParamSpec("P")
T = TypeVar("T")


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
