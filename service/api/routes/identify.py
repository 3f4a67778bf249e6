"""POST /identify: who is this? Each face's best-matching enrolled identities, or "unknown".

A key without `gallery:read` (an `identify` key) sees only candidates at or above a floor
(FACEVERIFY_IDENTIFY_CANDIDATE_FLOOR, default the server's decision threshold): below it a
candidate is, at the service's operating point, not the person in the photo, so listing it would
only give away who is enrolled (a name directory and a similarity oracle for any face). Keys
with `gallery:read`, which may list the gallery anyway, and requests without keys configured
see every candidate.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile

from service.api.auth import key_allows
from service.api.deps import Services, get_gallery, get_services
from service.api.errors import GALLERY_INFERENCE_ERRORS, documented
from service.api.liveness import LIVENESS_FIELD, liveness_wanted, require_live
from service.api.schemas import FaceOut, IdentityRef
from service.api.schemas_gallery import CandidateOut, FpirOut, IdentifyResponse, IdentifyResult
from service.api.thresholds import resolve_identify_threshold
from service.api.uploads import read_upload
from service.faces.pipeline import select_face
from service.faces.quality import QualityLevel, require_quality
from service.gallery import Gallery
from service.matching import decide

router = APIRouter(tags=["gallery"])

DEFAULT_TOP_K = 5
# Candidates per face an answer may list: beyond this a client wants a search engine, and
# each extra identity costs a wider index search.
MAX_TOP_K = 100


def candidate_floor(services: Services, request: Request) -> float | None:
    """The lowest similarity of a candidate this request may see; None: every candidate."""
    settings = services.settings
    if key_allows(request, "gallery:read", keys_enabled=settings.keys_enabled()):
        return None
    configured = settings.identify_candidate_floor
    return services.threshold if configured is None else configured


def _first(*values):
    """The form value if sent, else the query value (both are accepted)."""
    return next((v for v in values if v is not None), None)


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    responses=documented(
        {
            400: "invalid_image",
            409: "model_mismatch (gallery has faces enrolled with another model), "
            "liveness_unavailable",
            413: "payload_too_large, image_too_large",
            415: "unsupported_format",
            422: "no_face, face_too_small, low_quality, liveness_failed, missing_field, "
            "validation_error",
            **GALLERY_INFERENCE_ERRORS,
        }
    ),
)
async def identify(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    gallery: Annotated[Gallery, Depends(get_gallery)],
    image: Annotated[UploadFile, File(description="Photo to identify.")],
    top_k: Annotated[
        int | None,
        Form(ge=1, le=MAX_TOP_K, description=f"Candidates per face (default {DEFAULT_TOP_K})."),
    ] = None,
    threshold: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="Cosine threshold for a known identity.")
    ] = None,
    target_fmr: Annotated[
        float | None,
        Form(gt=0.0, lt=1.0, description="Use the pack's threshold calibrated for this FMR."),
    ] = None,
    target_fpir: Annotated[
        float | None,
        Form(
            gt=0.0,
            lt=1.0,
            description="Threshold that keeps strangers unknown at this false-positive "
            "identification rate for the gallery's current size (measured on the gallery).",
        ),
    ] = None,
    all_faces: Annotated[
        bool | None, Form(description="Identify every face, not only the largest.")
    ] = None,
    flip: Annotated[bool | None, Form(description="Flip-test (crop + mirror).")] = None,
    min_quality: Annotated[
        QualityLevel | None,
        Form(description="Refuse faces under this level (with all_faces: skip them)."),
    ] = None,
    liveness: Annotated[bool | None, Form(description=LIVENESS_FIELD)] = None,
    top_k_query: Annotated[int | None, Query(alias="top_k", ge=1, le=MAX_TOP_K)] = None,
    threshold_query: Annotated[float | None, Query(alias="threshold", ge=-1.0, le=1.0)] = None,
    all_faces_query: Annotated[bool | None, Query(alias="all_faces")] = None,
    target_fmr_query: Annotated[float | None, Query(alias="target_fmr", gt=0.0, lt=1.0)] = None,
    target_fpir_query: Annotated[float | None, Query(alias="target_fpir", gt=0.0, lt=1.0)] = None,
) -> IdentifyResponse:
    """Search the gallery for the largest face (or every face with `all_faces`). Each result
    lists up to `top_k` identities (the best face of each, with its similarity); `identity` is
    the first of them when its similarity reaches the threshold, else null: unknown. A key
    without `gallery:read` sees only candidates at or above FACEVERIFY_IDENTIFY_CANDIDATE_FLOOR
    (default: the server's threshold), whatever `threshold` the request sends."""
    start = time.perf_counter()
    wanted = _first(top_k, top_k_query) or DEFAULT_TOP_K
    given_threshold = _first(threshold, threshold_query)
    # An FPIR threshold may read the gallery (its first measurement): a gallery call.
    used_threshold, threshold_source, fpir = await services.gallery_calls.run(
        resolve_identify_threshold,
        services,
        given_threshold,
        _first(target_fmr, target_fmr_query),
        _first(target_fpir, target_fpir_query),
    )
    live = liveness_wanted(services, liveness)
    data = await read_upload(image, services.settings)
    every_face = bool(_first(all_faces, all_faces_query))
    analyzed = await services.scheduler.run(
        services.pipeline.analyze,
        data,
        flip=flip,
        faces="all" if every_face else "largest",
        liveness=live,
    )
    largest = select_face(analyzed, "largest")  # no_face / face_too_small when none is usable
    faces = analyzed.faces if every_face else [largest]
    if min_quality is not None:
        kept = [face for face in faces if face.quality.at_least(min_quality)]
        if not kept:  # refuse with the reasons of the largest face
            require_quality(largest.quality, min_quality, "this request (min_quality)")
        faces = kept or faces
    require_live(services, faces)
    search_start = time.perf_counter()
    ranked = await services.gallery_calls.run(
        gallery.identify, np.stack([face.embedding for face in faces]), wanted
    )
    timings = {stage: round(ms, 3) for stage, ms in analyzed.timings_ms.items()}
    timings["search"] = round((time.perf_counter() - search_start) * 1000.0, 3)
    floor = candidate_floor(services, request)
    results = []
    for face, ranked_candidates in zip(faces, ranked, strict=True):
        candidates = [c for c in ranked_candidates if floor is None or decide(c.similarity, floor)]
        best = candidates[0] if candidates else None
        known = best is not None and decide(best.similarity, used_threshold)
        results.append(
            IdentifyResult(
                face=FaceOut.of(face),
                identity=IdentityRef(id=best.identity_id, name=best.name) if known else None,
                candidates=[CandidateOut.of(c) for c in candidates],
            )
        )
    timings["total"] = round((time.perf_counter() - start) * 1000.0, 3)
    return IdentifyResponse(
        model=services.pack.model_id,
        threshold=used_threshold,
        threshold_source=threshold_source,
        fpir=FpirOut.of(fpir) if fpir is not None else None,
        results=results,
        timings_ms=timings,
    )
