"""GET /status: the service's model pack, runtime, threshold, index and gallery counts in one
JSON answer (what the console's Status page shows; /readyz stays a lean probe)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service import __version__
from service.api.deps import Services, get_gallery, get_services
from service.api.errors import documented
from service.api.schemas_status import GalleryCounts, IndexStatus, ServiceStatus
from service.gallery import Gallery

router = APIRouter(tags=["operations"])


@router.get("/status", response_model=ServiceStatus, responses=documented({}))
async def status(
    services: Annotated[Services, Depends(get_services)],
    gallery: Annotated[Gallery, Depends(get_gallery)],
) -> ServiceStatus:
    """What is loaded and how big the gallery is. Needs an API key when keys are on."""
    identities, faces = await run_in_threadpool(gallery.store.counts)
    index = gallery.index_state
    pack = services.pack
    return ServiceStatus(
        version=__version__,
        model=pack.model_id,
        pack=pack.name,
        detector=pack.manifest.detector.file,
        recognizer=pack.manifest.recognizer.file,
        embedding_size=services.pipeline.embedder.embedding_size,
        provider=services.pipeline.provider,
        threshold=services.threshold,
        pack_threshold=pack.manifest.threshold,
        index=IndexStatus(type=index.kind, device=index.device, size=index.size),
        gallery=GalleryCounts(identities=identities, faces=faces),
        max_upload_bytes=services.settings.max_upload_bytes,
        api_keys=bool(services.settings.api_key_list()),
        liveness=services.settings.liveness,
        liveness_model=services.pipeline.liveness.model if services.pipeline.liveness else None,
    )
