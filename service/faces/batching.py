"""Cross-request micro-batching of model calls.

`MicroBatcher` joins pipeline runs in different slots: they hand their aligned crops (or, for a
detector with a batch axis, their letterboxed images) to one model call, up to `max_batch`
items, waiting at most `max_wait_ms` for company. On a CPU a batch costs what its items cost one
by one (docs/performance.md), so the default wait is 0: only work already queued is joined. On a
GPU one call for many faces is what keeps the device busy. How many pipeline runs happen at once
is decided at the HTTP edge (`service.api.admission`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


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
