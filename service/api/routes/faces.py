"""POST /embed and POST /detect: every face of one photo, with or without embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.api.deps import Services, get_services
from service.api.errors import INFERENCE_ERRORS, documented
from service.api.liveness import LIVENESS_FIELD, liveness_wanted, require_live
from service.api.schemas import DetectResponse, EmbeddedFaceOut, EmbedResponse, FaceOut
from service.api.uploads import read_upload

router = APIRouter(tags=["faces"])

# A photo with no face is an empty list here, not an error.
ERROR_RESPONSES = documented(
    {
        400: "invalid_image",
        413: "payload_too_large, image_too_large",
        415: "unsupported_format",
        422: "missing_field, validation_error",
        **INFERENCE_ERRORS,
    }
)


EMBED_ERROR_RESPONSES = documented(
    {
        400: "invalid_image",
        409: "liveness_unavailable",
        413: "payload_too_large, image_too_large",
        415: "unsupported_format",
        422: "liveness_failed, missing_field, validation_error",
        **INFERENCE_ERRORS,
    }
)


@router.post("/embed", response_model=EmbedResponse, responses=EMBED_ERROR_RESPONSES)
async def embed(
    services: Annotated[Services, Depends(get_services)],
    image: Annotated[UploadFile, File(description="Photo.")],
    flip: Annotated[bool | None, Form(description="Flip-test (crop + mirror).")] = None,
    liveness: Annotated[bool | None, Form(description=LIVENESS_FIELD)] = None,
) -> EmbedResponse:
    """Every face in the photo (largest first) with its L2-normalised embedding."""
    live = liveness_wanted(services, liveness)
    data = await read_upload(image, services.settings)
    analyzed = await services.scheduler.run(
        services.pipeline.analyze, data, flip=flip, liveness=live
    )
    require_live(services, analyzed.faces)
    return EmbedResponse(
        model=services.pack.model_id,
        faces=[EmbeddedFaceOut.of(face) for face in analyzed.faces],
        timings_ms={k: round(v, 3) for k, v in analyzed.timings_ms.items()},
    )


@router.post("/detect", response_model=DetectResponse, responses=ERROR_RESPONSES)
async def detect(
    services: Annotated[Services, Depends(get_services)],
    image: Annotated[UploadFile, File(description="Photo.")],
) -> DetectResponse:
    """Every face in the photo (largest first): box, landmarks, detection score."""
    data = await read_upload(image, services.settings)
    detected = await services.scheduler.run(services.pipeline.detect, data)
    return DetectResponse(
        faces=[FaceOut.of(face) for face in detected.faces],
        width=detected.width,
        height=detected.height,
        timings_ms={k: round(v, 3) for k, v in detected.timings_ms.items()},
    )
