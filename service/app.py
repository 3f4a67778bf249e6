"""The app factory: wiring only. Builds settings → pack → pipeline → gallery and the routers."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.admission import InferenceScheduler, SchedulerOptions, plan_slots
from service.api.auth import ApiKeyAuth
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.headers import SecurityHeaders
from service.api.hosts import HostAllowList, HostCheck
from service.api.middleware import RequestMetrics
from service.api.openapi import install_openapi
from service.api.origin import CrossSiteRefusal, parse_allowed_origins
from service.api.ratelimit import RateLimit, TokenBuckets
from service.api.routes import faces, health, identify, identities, status, verify
from service.api.routes.gallery_report import router as gallery_report_router
from service.api.uploads import BodyLimits, request_body_limit
from service.errors import ServiceError
from service.faces.batching import BatchingOptions
from service.faces.detector import DetectorOptions
from service.faces.images import DecodeLimits
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.faces.quality import QualityLimits
from service.gallery import open_gallery
from service.gallery.fpir import REPORTED_FPIRS, FpirCalibrator, FpirEstimate, FpirOptions
from service.keys import KeyRing
from service.memory import tune_heap
from service.metrics import Metrics
from service.packs import load_pack
from service.packs.thresholds import Calibration
from service.runtime import RuntimeOptions
from service.settings import Settings
from service.web.console import install_console
from service.web.docs import install_docs
from service.workers import WorkerReadiness, watch_parent_from_env, worker_readiness_from_env

log = logging.getLogger("service")

DESCRIPTION = """Face verification and identification.

Upload photos as multipart files. Faces are detected (SCRFD), aligned to the 112x112 ArcFace
template on 5 landmarks and embedded by the model pack's recognizer; similarities are cosines
of L2-normalised embeddings. Errors are `{"error": {"code", "message"}}` with stable codes.
"""


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        limits=DecodeLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_image_pixels,
            max_decode_bytes=settings.max_decode_bytes,
        ),
        detector=DetectorOptions(
            input_size=settings.det_size, score_threshold=settings.det_score_threshold
        ),
        min_face_size=settings.min_face_size,
        flip=settings.flip,
        max_faces=settings.max_faces,
        quality=QualityLimits(
            embedding_norm_low=settings.min_embedding_norm,
            embedding_norm_medium=settings.min_embedding_norm,
        ),
    )


def export_fpir(metrics: Metrics, estimate: FpirEstimate, calibration: Calibration | None) -> None:
    """The reported FPIRs' thresholds as gauges: NaN where the gallery cannot support one."""
    metrics.identify_fpir_probes.set(estimate.probes)
    for target in REPORTED_FPIRS:
        try:
            threshold = estimate.threshold(target, calibration).threshold
        except ServiceError:
            threshold = math.nan
        metrics.identify_fpir_threshold.labels(f"{target:g}").set(threshold)


def build_services(settings: Settings, metrics: Metrics) -> Services:
    """Load the pack and open the gallery; raises PackError on a bad pack."""
    pack = load_pack(settings.pack_dir, verify_checksums=settings.verify_checksums)
    slots, threads = plan_slots(
        settings.inference_slots, settings.intra_op_threads, settings.workers
    )
    runtime = RuntimeOptions(
        providers=settings.providers,
        intra_op_threads=threads,
        inter_op_threads=settings.inter_op_threads,
        graph_optimization=settings.graph_optimization,
    )
    pipeline = FacePipeline.from_pack(pack, pipeline_options(settings), runtime, metrics)
    pipeline.enable_batching(BatchingOptions(settings.batch_max_size, settings.batch_max_wait_ms))
    pipeline.warm_up()
    metrics.model_info.labels(
        pack.name,
        pack.model_id,
        pack.manifest.detector.file,
        pack.manifest.recognizer.file,
        str(pipeline.embedder.embedding_size),
        pipeline.provider,
    ).set(1)
    log.info(
        "model pack %s loaded from %s: %d-d embeddings on %s, threshold %.3f",
        pack.model_id,
        pack.directory,
        pipeline.embedder.embedding_size,
        pipeline.provider,
        pack.manifest.threshold if settings.threshold is None else settings.threshold,
    )
    if settings.liveness != "off" and pipeline.liveness is None:
        log.warning(
            "FACEVERIFY_LIVENESS=%s but pack %s has no liveness models: requests that need the "
            "check are answered 409 liveness_unavailable (docs/liveness.md)",
            settings.liveness,
            pack.name,
        )
    gallery = open_gallery(settings, pack, metrics)
    fpir = FpirCalibrator(
        gallery,
        FpirOptions(probes=settings.fpir_probes),
        on_measured=lambda estimate: export_fpir(metrics, estimate, pack.manifest.thresholds),
    )
    if settings.identify_fpir is not None:
        fpir.start()
    scheduler = InferenceScheduler(slots, SchedulerOptions(queue_limit=settings.queue_limit))
    return Services(
        settings=settings,
        pack=pack,
        pipeline=pipeline,
        metrics=metrics,
        gallery=gallery,
        scheduler=scheduler,
        fpir=fpir,
    )


class BackgroundStartup:
    """Builds the services in a thread while the server already answers: uvicorn serves
    nothing until the lifespan's start-up returns, so a long load (a big gallery index) would
    leave /healthz silent and a liveness probe would kill the process. Until the load is done
    /readyz and every model route answer 503 `not_ready`; if it fails, /healthz does too."""

    def __init__(
        self,
        app: FastAPI,
        settings: Settings,
        metrics: Metrics,
        worker_readiness: WorkerReadiness | None = None,
    ) -> None:
        self._app = app
        self._settings = settings
        self._metrics = metrics
        self._worker_readiness = worker_readiness
        self._thread = threading.Thread(target=self._load, name="faceverify-startup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        try:
            self._app.state.services = build_services(self._settings, self._metrics)
        except Exception as exc:  # reported by /healthz and /readyz, and logged in full
            log.exception("start-up failed")
            self._app.state.startup_error = f"{type(exc).__name__}: {exc}"
        else:
            if self._worker_readiness is not None:
                self._worker_readiness.mark_ready()
            log.info("ready for traffic")

    def join(self) -> None:
        self._thread.join()


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    load_in_background: bool = False,
    worker_readiness: WorkerReadiness | None = None,
) -> FastAPI:
    """The ASGI app. `services` lets tests inject ready-made components. With
    `load_in_background`, start-up returns at once and the models and gallery load in a
    thread (what the served app does); otherwise start-up waits for them. With
    `worker_readiness` (several workers), /readyz waits for every worker (`service.workers`)."""
    settings = settings or (services.settings if services else Settings())
    metrics = services.metrics if services else Metrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        startup = None
        if load_in_background and services is None:
            startup = BackgroundStartup(app, settings, metrics, worker_readiness)
            startup.start()
        else:
            app.state.services = services or build_services(settings, metrics)
            if worker_readiness is not None:
                worker_readiness.mark_ready()
        try:
            yield
        finally:
            if worker_readiness is not None:
                worker_readiness.withdraw()
            if startup is not None:
                startup.join()  # a load in progress finishes before its gallery is closed
            ready = app.state.services
            if ready is not None:
                ready.pipeline.close()
            app.state.services = None
            if ready is not None and ready.fpir is not None:
                ready.fpir.stop()
            if ready is not None:
                ready.gallery_calls.close()
            if ready is not None and ready.gallery is not None:
                ready.gallery.close()

    app = FastAPI(
        title="faceverify",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets by install_docs: no CDN
        redoc_url=None,
    )
    app.state.metrics = metrics
    metrics.gallery_counts_exported = settings.metrics_gallery_counts_exported()
    app.state.services = None
    app.state.startup_error = None
    app.state.worker_readiness = worker_readiness
    install_error_handlers(app)
    for module in (verify, faces, identities, identify, health, status):
        app.include_router(module.router)
    app.include_router(gallery_report_router)
    install_openapi(app, api_keys=settings.keys_enabled(), rate_limit=settings.rate_limit > 0)
    install_docs(app)
    if settings.console:
        install_console(app)
    # Outermost last: metrics see every answer and every answer gets the security headers;
    # the Host and the request's site, then keys, scopes and rate limits are checked before a
    # body is read.
    app.add_middleware(
        BodyLimits, max_bytes=request_body_limit(settings), timeout_s=settings.body_timeout_s
    )
    if settings.rate_limit > 0:
        buckets = TokenBuckets(settings.rate_limit, settings.rate_burst)
        app.add_middleware(RateLimit, buckets=buckets)
    if settings.keys_enabled():
        app.add_middleware(
            ApiKeyAuth, keys=KeyRing(settings.api_key_list(), settings.api_keys_file)
        )
    app.add_middleware(
        CrossSiteRefusal, allowed_origins=parse_allowed_origins(settings.allowed_origins)
    )
    app.add_middleware(HostCheck, allowed=HostAllowList.from_settings(settings))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def create_served_app() -> FastAPI:
    """The app `python -m service` runs (uvicorn's factory): settings from the environment,
    models and gallery loaded in the background so the probes answer from the first second,
    and glibc's malloc tuned before the serving threads start (`service.memory`). A worker of
    several ends when its server process dies (`service.workers`)."""
    watch_parent_from_env()
    tune_heap()
    settings = Settings()
    return create_app(
        settings,
        load_in_background=True,
        worker_readiness=worker_readiness_from_env(settings.workers),
    )
