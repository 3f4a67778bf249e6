"""The app factory: wiring only. Builds settings → pack → pipeline → gallery and the routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.auth import ApiKeyAuth
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.middleware import RequestMetrics
from service.api.openapi import install_openapi
from service.api.routes import faces, health, identify, identities, verify
from service.api.uploads import BodySizeLimit, request_body_limit
from service.faces.detector import DetectorOptions
from service.faces.images import DecodeLimits
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.faces.scheduler import (
    BatchingOptions,
    InferenceScheduler,
    SchedulerOptions,
    plan_slots,
)
from service.gallery import open_gallery
from service.metrics import Metrics
from service.packs import load_pack
from service.runtime import RuntimeOptions
from service.settings import Settings

log = logging.getLogger("service")

DESCRIPTION = """Face verification and identification.

Upload photos as multipart files. Faces are detected (SCRFD), aligned to the 112x112 ArcFace
template on 5 landmarks and embedded by the model pack's recognizer; similarities are cosines
of L2-normalised embeddings. Errors are `{"error": {"code", "message"}}` with stable codes.
"""


def pipeline_options(settings: Settings) -> PipelineOptions:
    return PipelineOptions(
        limits=DecodeLimits(
            max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
        ),
        detector=DetectorOptions(
            input_size=settings.det_size, score_threshold=settings.det_score_threshold
        ),
        min_face_size=settings.min_face_size,
        flip=settings.flip,
        max_faces=settings.max_faces,
    )


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
    )
    pipeline = FacePipeline.from_pack(pack, pipeline_options(settings), runtime, metrics)
    pipeline.enable_batching(BatchingOptions(settings.batch_max_size, settings.batch_max_wait_ms))
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
    gallery = open_gallery(settings, pack, metrics)
    scheduler = InferenceScheduler(slots, SchedulerOptions(queue_limit=settings.queue_limit))
    return Services(
        settings=settings,
        pack=pack,
        pipeline=pipeline,
        metrics=metrics,
        gallery=gallery,
        scheduler=scheduler,
    )


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """The ASGI app. `services` lets tests inject ready-made components."""
    settings = settings or (services.settings if services else Settings())
    metrics = services.metrics if services else Metrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or build_services(settings, metrics)
        try:
            yield
        finally:
            gallery = app.state.services.gallery
            app.state.services.pipeline.close()
            app.state.services = None
            if gallery is not None:
                gallery.close()

    app = FastAPI(
        title="faceverify",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.services = None
    install_error_handlers(app)
    for module in (verify, faces, identities, identify, health):
        app.include_router(module.router)
    api_keys = settings.api_key_list()
    install_openapi(app, api_keys=bool(api_keys))
    # Outermost last: metrics see every answer; keys are checked before a body is read.
    app.add_middleware(BodySizeLimit, max_bytes=request_body_limit(settings))
    if api_keys:
        app.add_middleware(ApiKeyAuth, keys=api_keys)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
