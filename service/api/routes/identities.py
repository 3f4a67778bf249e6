"""Identity CRUD and face enrolment: /identities and /identities/{id}/faces."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile

from service.api.audit import AuditAction, AuditTrail, get_audit
from service.api.deps import (
    GalleryCalls,
    Services,
    get_gallery,
    get_gallery_calls,
    get_services,
    require_json_body,
)
from service.api.errors import GALLERY_ERRORS, GALLERY_INFERENCE_ERRORS, documented
from service.api.liveness import LIVENESS_FIELD, liveness_wanted, require_live
from service.api.schemas_gallery import (
    EnrolledFace,
    EnrolledFaceRecord,
    IdentityOut,
    IdentityPage,
    IdentitySummary,
)
from service.api.uploads import read_upload
from service.errors import ErrorCode, ServiceError
from service.gallery import Gallery
from service.gallery.enrolment import choose_enrolment_face, enrolment_level
from service.gallery.interface import ID_MAX_LENGTH, ID_PATTERN
from service.gallery.records import EmbeddingEnrol, IdentityCreate, IdentityUpdate

router = APIRouter(tags=["gallery"])

# Page size of GET /identities: default, and the most one page may hold.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# SQLite binds integers as signed 64-bit values; a larger OFFSET cannot even be sent to it.
MAX_PAGE_OFFSET = 2**63 - 1


NOT_FOUND = documented(
    {404: "not_found (unknown identity)", 422: "validation_error", **GALLERY_ERRORS}
)

GalleryDep = Annotated[Gallery, Depends(get_gallery)]
CallsDep = Annotated[GalleryCalls, Depends(get_gallery_calls)]
# Ids in paths: what an id may hold (one rule for both backends); anything else is a 422.
IdentityId = Annotated[
    str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, description="Identity id.")
]
FaceId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH, description="Face id.")]
JSON_BODY = [Depends(require_json_body)]
JSON_ERRORS = {413: "payload_too_large", 415: "unsupported_media_type"}


def resource_url(request: Request, *segments: str) -> str:
    """Path of a created resource, for the `Location` header of a 201 (RFC 9110 10.2.2); it
    keeps the app's root path when served under a prefix."""
    return "/".join([request.scope.get("root_path", "").rstrip("/"), *segments])


AuditDep = Annotated[AuditTrail, Depends(get_audit)]


@router.post(
    "/identities",
    status_code=201,
    response_model=IdentityOut,
    dependencies=JSON_BODY,
    responses=documented({**JSON_ERRORS, 422: "missing_field, validation_error", **GALLERY_ERRORS}),
)
async def create_identity(
    body: IdentityCreate,
    gallery: GalleryDep,
    calls: CallsDep,
    audit: AuditDep,
    request: Request,
    response: Response,
) -> IdentityOut:
    """Create an identity with no faces yet; enrol photos with POST /identities/{id}/faces.
    `Location` gives the new identity's URL."""
    identity = await calls.run(gallery.create_identity, body.name, body.metadata)
    audit.record(AuditAction.IDENTITY_CREATE, identity.id)
    response.headers["Location"] = resource_url(request, "identities", identity.id)
    return IdentityOut(**IdentitySummary.of(identity).model_dump(), faces=[])


@router.get(
    "/identities",
    response_model=IdentityPage,
    responses=documented({422: "validation_error", **GALLERY_ERRORS}),
)
async def list_identities(
    gallery: GalleryDep,
    calls: CallsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_PAGE_OFFSET)] = 0,
) -> IdentityPage:
    """Identities in creation order, one page at a time (`total` counts them all)."""
    identities, total = await calls.run(gallery.list_identities, limit, offset)
    return IdentityPage(
        items=[IdentitySummary.of(i) for i in identities], total=total, limit=limit, offset=offset
    )


@router.get("/identities/{identity_id}", response_model=IdentityOut, responses=NOT_FOUND)
async def get_identity(
    identity_id: IdentityId, gallery: GalleryDep, calls: CallsDep
) -> IdentityOut:
    """One identity with its enrolled faces (ids, model, quality; never the photos)."""
    details = await calls.run(gallery.get_identity, identity_id)
    return IdentityOut.of_details(details, gallery.model_id)


@router.patch(
    "/identities/{identity_id}",
    response_model=IdentityOut,
    dependencies=JSON_BODY,
    responses={**NOT_FOUND, **documented(JSON_ERRORS)},
)
async def update_identity(
    identity_id: IdentityId,
    body: IdentityUpdate,
    gallery: GalleryDep,
    calls: CallsDep,
    audit: AuditDep,
) -> IdentityOut:
    """Rename an identity or replace its metadata; searches show the new name at once."""
    details = await calls.run(
        partial(gallery.update_identity, identity_id, name=body.name, metadata=body.metadata)
    )
    audit.record(AuditAction.IDENTITY_UPDATE, identity_id)
    return IdentityOut.of_details(details, gallery.model_id)


@router.delete(
    "/identities/{identity_id}", status_code=204, response_class=Response, responses=NOT_FOUND
)
async def delete_identity(
    identity_id: IdentityId, gallery: GalleryDep, calls: CallsDep, audit: AuditDep
) -> Response:
    """Delete an identity and erase its faces: rows deleted, freed pages zeroed, journal
    truncated; every worker stops returning it at its next request."""
    await calls.run(gallery.delete_identity, identity_id)
    audit.record(AuditAction.IDENTITY_DELETE, identity_id)
    return Response(status_code=204)


@router.post(
    "/identities/{identity_id}/faces",
    status_code=201,
    response_model=EnrolledFace,
    responses=documented(
        {
            400: "invalid_image",
            404: "not_found (unknown identity)",
            409: "liveness_unavailable",
            413: "payload_too_large, image_too_large",
            415: "unsupported_format",
            422: "no_face, face_too_small, low_quality, multiple_faces, liveness_failed, "
            "missing_field, validation_error",
            **GALLERY_INFERENCE_ERRORS,
        }
    ),
)
async def add_face(
    identity_id: IdentityId,
    services: Annotated[Services, Depends(get_services)],
    gallery: GalleryDep,
    calls: CallsDep,
    request: Request,
    response: Response,
    audit: AuditDep,
    image: Annotated[UploadFile, File(description="Photo of the person (largest face is used).")],
    flip: Annotated[bool | None, Form(description="Flip-test (crop + mirror).")] = None,
    liveness: Annotated[bool | None, Form(description=LIVENESS_FIELD)] = None,
) -> EnrolledFace:
    """Enrol the largest face of the photo. The photo itself is not stored: only the
    embedding, its model, quality, detection score and the photo's sha256. `Location` gives
    the new face's URL."""
    await calls.run(gallery.require_identity, identity_id)  # 404 before inference
    live = liveness_wanted(services, liveness)
    data = await read_upload(image, services.settings)
    settings = services.settings
    # Only the largest face is enrolled; all are embedded only when they must be counted.
    wanted = "all" if settings.require_single_face else "largest"
    analyzed = await services.scheduler.run(
        services.pipeline.analyze, data, flip=flip, faces=wanted, liveness=live
    )
    face = choose_enrolment_face(
        analyzed,
        require_single_face=settings.require_single_face,
        min_quality=settings.min_enrol_quality,
        min_level=enrolment_level(settings.enrol_quality),
    )
    require_live(services, [face])
    record = await calls.run(
        partial(
            gallery.add_face,
            identity_id,
            face.embedding,
            quality=face.quality.embedding_norm,
            det_score=face.face.score,
            image_sha256=hashlib.sha256(data).hexdigest(),
        )
    )
    audit.record(AuditAction.FACE_ADD, identity_id, record.face_id)
    response.headers["Location"] = resource_url(
        request, "identities", identity_id, "faces", record.face_id
    )
    return EnrolledFace.of_enrolment(face, record)


@router.get(
    "/identities/{identity_id}/faces/{face_id}",
    response_model=EnrolledFaceRecord,
    responses=documented(
        {404: "not_found (unknown identity or face)", 422: "validation_error", **GALLERY_ERRORS}
    ),
)
async def get_face(
    identity_id: IdentityId, face_id: FaceId, gallery: GalleryDep, calls: CallsDep
) -> EnrolledFaceRecord:
    """One enrolled face of an identity (model, quality, origin; never the photo)."""
    details = await calls.run(gallery.get_identity, identity_id)
    for face in details.faces:
        if face.face_id == face_id:
            return EnrolledFaceRecord.of(face, gallery.model_id)
    raise ServiceError(ErrorCode.NOT_FOUND, f"identity {identity_id} has no face {face_id}")


@router.delete(
    "/identities/{identity_id}/faces/{face_id}",
    status_code=204,
    response_class=Response,
    responses=documented(
        {404: "not_found (unknown identity or face)", 422: "validation_error", **GALLERY_ERRORS}
    ),
)
async def delete_face(
    identity_id: IdentityId, face_id: FaceId, gallery: GalleryDep, calls: CallsDep, audit: AuditDep
) -> Response:
    """Delete one enrolled face (erased like DELETE /identities/{id})."""
    await calls.run(gallery.delete_face, identity_id, face_id)
    audit.record(AuditAction.FACE_DELETE, identity_id, face_id)
    return Response(status_code=204)


@router.post(
    "/identities/{identity_id}/embeddings",
    status_code=201,
    response_model=EnrolledFaceRecord,
    dependencies=JSON_BODY,
    responses=documented(
        {
            **JSON_ERRORS,
            404: "not_found (unknown identity)",
            409: "model_mismatch (the embedding was made by another model)",
            422: "missing_field, validation_error (wrong size, values not finite)",
            **GALLERY_ERRORS,
        }
    ),
)
async def add_embedding(
    identity_id: IdentityId,
    body: EmbeddingEnrol,
    gallery: GalleryDep,
    calls: CallsDep,
    audit: AuditDep,
    request: Request,
    response: Response,
) -> EnrolledFaceRecord:
    """Enrol a face from an embedding computed elsewhere with the loaded model (`model` must be
    its id, as GET /readyz shows). For systems that run the models themselves, or migrate
    embeddings without the photos. `Location` gives the new face's URL."""
    record = await calls.run(gallery.add_embedding, identity_id, body.embedding, body.model)
    audit.record(AuditAction.FACE_ADD, identity_id, record.face_id)
    response.headers["Location"] = resource_url(
        request, "identities", identity_id, "faces", record.face_id
    )
    return EnrolledFaceRecord.of(record, gallery.model_id)
