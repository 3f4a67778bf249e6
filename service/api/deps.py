"""What routes depend on: the `Services` built once per app, injected with `Depends`, and
`GalleryCalls`, the one way a request reaches the gallery (bounded in time and in number)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from fastapi import Request

from service.api.admission import InferenceScheduler
from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import FacePipeline
from service.metrics import Metrics
from service.packs import ModelPack
from service.settings import Settings

if TYPE_CHECKING:
    from service.gallery import Gallery
    from service.gallery.fpir import FpirCalibrator

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


@dataclass
class Services:
    """Everything a request needs, created by the app's lifespan."""

    settings: Settings
    pack: ModelPack
    pipeline: FacePipeline
    metrics: Metrics
    gallery: Gallery | None = None
    # The app builds one sized to the machine (`plan_slots`); this default serves tests that
    # assemble Services by hand.
    scheduler: InferenceScheduler = field(default_factory=lambda: InferenceScheduler(slots=2))
    # Keeps /identify's FPIR thresholds measured on the gallery (service.gallery.fpir).
    fpir: FpirCalibrator | None = None
    gallery_calls: GalleryCalls = field(init=False)

    def __post_init__(self) -> None:
        self.gallery_calls = GalleryCalls(
            self.settings.gallery_timeout_s, self.settings.gallery_concurrency
        )

    @property
    def threshold(self) -> float:
        """The server's default cosine threshold (`default_threshold`)."""
        return self.default_threshold()[0]

    def default_threshold(self) -> tuple[float, str]:
        """(threshold, source) when a request names none: FACEVERIFY_THRESHOLD (`settings`),
        else the pack's (`pack default`). The one place the default is chosen."""
        configured = self.settings.threshold
        if configured is not None:
            return configured, "settings"
        return self.pack.manifest.threshold, "pack default"


def startup_failure(request: Request) -> str | None:
    """Why loading the models or the gallery failed, or None (loaded, or still loading)."""
    return getattr(request.app.state, "startup_error", None)


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        failure = startup_failure(request)
        if failure is not None:
            raise ServiceError(
                ErrorCode.NOT_READY, f"start-up failed ({failure}); the server log has details"
            )
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet; retry shortly")
    return services


def require_json_body(request: Request) -> None:
    """415 `unsupported_media_type` unless the body is declared as JSON (`application/json` or
    a `+json` type); a body with no content type is refused too rather than guessed."""
    declared = request.headers.get("content-type") or "none"
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "this route takes a JSON body sent as Content-Type: application/json, "
            f"not {media_type!r}",
        )


def get_gallery_calls(request: Request) -> GalleryCalls:
    return get_services(request).gallery_calls


def get_gallery(request: Request) -> Gallery:
    return gallery_of(get_services(request))


def gallery_of(services: Services) -> Gallery:
    """The open gallery, or 503 `not_ready` (for routes that need it only sometimes)."""
    if services.gallery is None:
        raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
    return services.gallery
