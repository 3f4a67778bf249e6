"""Gallery calls (both backends) run apart from inference, each bounded in time and number,
and the gallery's readiness checked off the event loop: a stalled SQLite file or a frozen Milvus
answers 503 `gallery_unavailable` quickly and never holds up `/verify` of two photos."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from service.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from service.gallery import Gallery

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# Gallery calls that may wait for a thread, per thread: beyond, a request is refused at once
# (a stalled backend would otherwise collect every request of the worker).
GALLERY_WAITING_PER_THREAD = 4
# How long a readiness answer may be reused, and the longest a /readyz waits for a fresh
# check (a stuck check is answered as "not ready" while it runs on in its own thread).
READINESS_MAX_AGE_S = 1.0
READINESS_WAIT_S = 1.0


class GalleryCalls:
    """Runs gallery calls (both backends) in threads of their own, apart from the thread pool
    the inference scheduler uses, so a stalled gallery never holds up `/verify` of two photos.

    Each call is bounded: at most `concurrency` run at once and `GALLERY_WAITING_PER_THREAD`
    times as many wait; a call beyond that, or one not finished in `timeout_s`, answers 503
    `gallery_unavailable` with `Retry-After`. A call that timed out keeps its thread until the
    backend answers or its own timeout ends it (Milvus requests carry the same timeout), and
    keeps its place in the limit until then.

    Readiness of the gallery is cached here too (`readiness`): the store's cheap `health()`
    check runs in a thread of its own at most once per
    `READINESS_MAX_AGE_S`, and /readyz never waits for it more than `READINESS_WAIT_S`.
    """

    def __init__(self, timeout_s: float, concurrency: int) -> None:
        self.timeout_s = timeout_s
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="faceverify-gallery")
        self._admitted = threading.BoundedSemaphore(concurrency * (1 + GALLERY_WAITING_PER_THREAD))
        self._probe_thread = ThreadPoolExecutor(1, thread_name_prefix="faceverify-readiness")
        self._probe: Future[None] | None = None
        self._probe_lock = threading.Lock()
        self._ready: tuple[float, str | None] | None = None  # (when, reason it is not ready)

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.timeout_s)))}

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`function(*args, **kwargs)` in a gallery thread, within `timeout_s`."""
        if not self._admitted.acquire(blocking=False):
            raise ServiceError(
                ErrorCode.GALLERY_UNAVAILABLE,
                "too many gallery calls are waiting for the gallery's store; retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            future = self._threads.submit(function, *args, **kwargs)
        except BaseException:
            self._admitted.release()
            raise
        future.add_done_callback(lambda _: self._admitted.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # still waiting for a thread: it never runs
            raise ServiceError(
                ErrorCode.GALLERY_UNAVAILABLE,
                f"the gallery's store did not answer in {self.timeout_s:g} s "
                "(FACEVERIFY_GALLERY_TIMEOUT_S); retry shortly",
                headers=self._retry_after(),
            ) from None

    def _check(self, gallery: Gallery) -> None:
        reason: str | None = None
        try:
            reason = gallery.store_health()
        except ServiceError as exc:
            reason = exc.message
        except Exception as exc:  # any failure of the store means "not ready", with its reason
            reason = f"the gallery store cannot be read: {type(exc).__name__}: {exc}"
        self._ready = (time.monotonic(), reason)

    async def readiness(self, gallery: Gallery) -> str | None:
        """None when the gallery answered its last check, else why not (never blocks)."""
        cached = self._ready
        if cached is not None and time.monotonic() - cached[0] < READINESS_MAX_AGE_S:
            return cached[1]
        with self._probe_lock:
            if self._probe is None or self._probe.done():
                self._probe = self._probe_thread.submit(self._check, gallery)
            probe = self._probe
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(probe)), READINESS_WAIT_S)
        except TimeoutError:
            return f"the gallery's store did not answer a readiness check in {READINESS_WAIT_S:g} s"
        return self._ready[1] if self._ready is not None else None

    def close(self) -> None:
        """Stop taking calls; threads still waiting on a backend end with its timeout."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._probe_thread.shutdown(wait=False, cancel_futures=True)
