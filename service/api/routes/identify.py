"""POST /identify: who is this? Each face's best-matching enrolled identities, or "unknown"."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import Services, get_gallery, get_services
from service.api.errors import INFERENCE_ERRORS, documented
from service.api.liveness import LIVENESS_FIELD, liveness_wanted, require_live
from service.api.schemas import FaceOut, IdentityRef
from service.api.schemas_gallery import CandidateOut, IdentifyResponse, IdentifyResult
from service.api.thresholds import resolve_threshold
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
            **INFERENCE_ERRORS,
        }
    ),
)
async def identify(
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
) -> IdentifyResponse:
    """Search the gallery for the largest face (or every face with `all_faces`). Each result
    lists up to `top_k` identities (the best face of each, with its similarity); `identity` is
    the first of them when its similarity reaches the threshold, else null: unknown."""
    start = time.perf_counter()
    wanted = _first(top_k, top_k_query) or DEFAULT_TOP_K
    given_threshold = _first(threshold, threshold_query)
    used_threshold, threshold_source = resolve_threshold(services, given_threshold, target_fmr)
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
    ranked = await run_in_threadpool(
        gallery.identify, np.stack([face.embedding for face in faces]), wanted
    )
    timings = {stage: round(ms, 3) for stage, ms in analyzed.timings_ms.items()}
    timings["search"] = round((time.perf_counter() - search_start) * 1000.0, 3)
    results = []
    for face, candidates in zip(faces, ranked, strict=True):
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
        results=results,
        timings_ms=timings,
    )
