"""POST /verify: are these two faces (or this face and an enrolled identity) the same person?"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from service.api.auth import key_allows
from service.api.deps import Services, gallery_of, get_services
from service.api.errors import GALLERY_INFERENCE_ERRORS, documented
from service.api.liveness import LIVENESS_FIELD, liveness_wanted, require_live
from service.api.schemas import FaceOut, IdentityRef, VerifyResponse
from service.api.thresholds import resolve_threshold
from service.api.uploads import read_upload
from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import AnalyzedImage, FaceRule, select_face
from service.faces.quality import QualityLevel, require_quality
from service.gallery.interface import ID_MAX_LENGTH, ID_PATTERN
from service.matching import cosine_similarity, decide

router = APIRouter(tags=["verification"])

ERROR_RESPONSES = documented(
    {
        400: "invalid_image",
        404: "not_found (unknown identity_id)",
        409: "model_mismatch, identity_has_no_faces, liveness_unavailable",
        413: "payload_too_large, image_too_large",
        415: "unsupported_format",
        422: "no_face, face_too_small, low_quality, liveness_failed, missing_field, "
        "validation_error",
        **GALLERY_INFERENCE_ERRORS,
    }
)


def _sum_timings(*images: AnalyzedImage) -> dict[str, float]:
    total: dict[str, float] = {}
    for image in images:
        for stage, ms in image.timings_ms.items():
            total[stage] = round(total.get(stage, 0.0) + ms, 3)
    return total


@router.post("/verify", response_model=VerifyResponse, responses=ERROR_RESPONSES)
async def verify(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    image1: Annotated[UploadFile | None, File(description="First photo.")] = None,
    image2: Annotated[UploadFile | None, File(description="Second photo.")] = None,
    image: Annotated[
        UploadFile | None, File(description="Photo to check against identity_id.")
    ] = None,
    identity_id: Annotated[
        str | None,
        Form(
            pattern=ID_PATTERN,
            max_length=ID_MAX_LENGTH,
            description="Enrolled identity to compare with.",
        ),
    ] = None,
    threshold: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="Cosine threshold.")
    ] = None,
    target_fmr: Annotated[
        float | None,
        Form(gt=0.0, lt=1.0, description="Use the pack's threshold calibrated for this FMR."),
    ] = None,
    face: Annotated[
        FaceRule, Form(description="Which face of each photo: largest or best.")
    ] = "largest",
    flip: Annotated[bool | None, Form(description="Flip-test (crop + mirror).")] = None,
    min_quality: Annotated[
        QualityLevel | None, Form(description="Refuse (422 low_quality) faces under this level.")
    ] = None,
    liveness: Annotated[bool | None, Form(description=LIVENESS_FIELD)] = None,
) -> VerifyResponse:
    """Compare the chosen face of `image1` with that of `image2`, or the face of `image` with
    the enrolled identity `identity_id`; `match` is `similarity >= threshold`. `identity` (its
    name) and `face_id` are given only to keys with `gallery:read` (or without keys)."""
    start = time.perf_counter()
    used_threshold, threshold_source = resolve_threshold(services, threshold, target_fmr)
    pipeline = services.pipeline
    live = liveness_wanted(services, liveness)
    pair = image1 is not None or image2 is not None
    if pair and (image is not None or identity_id is not None):
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR,
            "send either `image1` and `image2`, or `image` and `identity_id`, not both",
        )
    if image1 is not None and image2 is not None:
        data1 = await read_upload(image1, services.settings)
        data2 = await read_upload(image2, services.settings)
        first, second = await asyncio.gather(
            services.scheduler.run(pipeline.analyze, data1, flip=flip, faces=face, liveness=live),
            services.scheduler.run(pipeline.analyze, data2, flip=flip, faces=face, liveness=live),
        )
        face1, face2 = select_face(first, face), select_face(second, face)
        for chosen in (face1, face2):
            require_quality(chosen.quality, min_quality, "this request (min_quality)")
        require_live(services, [face1, face2])
        similarity = cosine_similarity(face1.embedding, face2.embedding)
        timings = _sum_timings(first, second)
        faces = [FaceOut.of(face1), FaceOut.of(face2)]
        identity, face_id = None, None
    elif image is not None and identity_id is not None:
        gallery = gallery_of(services)
        data = await read_upload(image, services.settings)
        probe_image = await services.scheduler.run(
            pipeline.analyze, data, flip=flip, faces=face, liveness=live
        )
        probe = select_face(probe_image, face)
        require_quality(probe.quality, min_quality, "this request (min_quality)")
        require_live(services, [probe])
        match = await services.gallery_calls.run(gallery.compare, identity_id, probe.embedding)
        similarity = match.similarity
        timings = _sum_timings(probe_image)
        faces = [FaceOut.of(probe)]
        identity, face_id = IdentityRef(id=match.identity_id, name=match.name), match.face_id
        if not key_allows(request, "gallery:read", keys_enabled=services.settings.keys_enabled()):
            # GET /identities/{id} is refused to such a key: /verify does not show it either.
            identity, face_id = None, None
    else:
        raise ServiceError(
            ErrorCode.MISSING_FIELD,
            "send two files `image1` and `image2`, or a file `image` and a form field "
            "`identity_id`",
        )
    timings["total"] = round((time.perf_counter() - start) * 1000.0, 3)
    return VerifyResponse(
        match=decide(similarity, used_threshold),
        similarity=round(similarity, 6),
        threshold=used_threshold,
        threshold_source=threshold_source,
        model=services.pack.model_id,
        faces=faces,
        timings_ms=timings,
        identity=identity,
        face_id=face_id,
    )
