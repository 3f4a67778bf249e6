"""GET /status: the service's model pack, runtime, threshold, index and gallery counts in one
JSON answer (what the console's Status page shows; /readyz stays a lean probe)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service import __version__
from service.api.deps import Services, get_gallery, get_services
from service.api.errors import GALLERY_ERRORS, documented
from service.api.schemas_status import FpirStatus, GalleryCounts, IndexStatus, ServiceStatus
from service.gallery import Gallery
from service.gallery.fpir import REPORTED_FPIRS

router = APIRouter(tags=["operations"])


@router.get("/status", response_model=ServiceStatus, responses=documented(GALLERY_ERRORS))
async def status(
    services: Annotated[Services, Depends(get_services)],
    gallery: Annotated[Gallery, Depends(get_gallery)],
) -> ServiceStatus:
    """What is loaded and how big the gallery is. Needs an API key when keys are on."""
    identities, faces = await services.gallery_calls.run(gallery.store.counts)
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
        api_keys=services.settings.keys_enabled(),
        identify_fpir=_fpir_status(services),
        liveness=services.settings.liveness,
        liveness_model=services.pipeline.liveness.model if services.pipeline.liveness else None,
    )


def _fpir_status(services: Services) -> FpirStatus:
    calibrator = services.fpir
    estimate = calibrator.estimate if calibrator is not None else None
    return FpirStatus(
        default_target=services.settings.identify_fpir,
        measured=(
            estimate.summary(REPORTED_FPIRS, services.pack.manifest.thresholds)
            if estimate is not None
            else None
        ),
        error=calibrator.last_error if calibrator is not None else None,
    )
