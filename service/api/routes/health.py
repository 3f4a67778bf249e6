"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Request, Response

from service.api.deps import get_services
from service.api.errors import documented
from service.api.schemas import Health, Readiness
from service.errors import ErrorCode, ServiceError

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive and serving HTTP."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=documented({}))
async def readyz(request: Request) -> Readiness:
    """Models are loaded and the gallery is open: ready for traffic (503 otherwise)."""
    services = get_services(request)
    if services.gallery is None:
        raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
    try:
        services.gallery.list_identities(limit=1, offset=0)
    except sqlite3.Error as exc:
        raise ServiceError(ErrorCode.NOT_READY, f"the gallery store cannot be read: {exc}") from exc
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
