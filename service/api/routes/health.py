"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Request, Response

from service.api.deps import get_services, startup_failure
from service.api.errors import documented
from service.api.schemas import Health, Readiness
from service.errors import ErrorCode, ServiceError

router = APIRouter(tags=["operations"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, responses=documented({}))
async def healthz(request: Request) -> Health:
    """The process is alive and serving HTTP, also while models load (then /readyz is 503).
    503 only when loading the models or the gallery failed: restarting is the remedy."""
    failure = startup_failure(request)
    if failure is not None:
        raise ServiceError(ErrorCode.NOT_READY, f"start-up failed ({failure})")
    return Health(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Readiness, responses=documented({}))
async def readyz(request: Request) -> Readiness:
    """Models are loaded and the gallery is open, in every worker: ready for traffic (503
    otherwise)."""
    services = get_services(request)
    if services.gallery is None:
        raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
    try:
        services.gallery.list_identities(limit=1, offset=0)
    except sqlite3.Error as exc:
        raise ServiceError(ErrorCode.NOT_READY, f"the gallery store cannot be read: {exc}") from exc
    except ServiceError as exc:  # the store's own storage codes (gone, busy, unreadable)
        raise ServiceError(ErrorCode.NOT_READY, exc.message) from exc
    store_problem = services.gallery.store_health()
    if store_problem is not None:
        raise ServiceError(ErrorCode.NOT_READY, store_problem)
    workers = request.app.state.worker_readiness
    if workers is not None and not workers.all_ready():
        raise ServiceError(
            ErrorCode.NOT_READY,
            f"{workers.ready_count()} of {workers.expected} workers have loaded their models",
        )
    return Readiness(
        status="ready",
        model=services.pack.model_id,
        embedding_size=services.pipeline.embedder.embedding_size,
        provider=services.pipeline.provider,
        threshold=services.threshold,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition format."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
