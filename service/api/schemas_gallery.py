"""Pydantic models of the gallery API: identities, enrolled faces and 1:N identification."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import (
    QUALITY_EXAMPLE,
    THRESHOLD_SOURCE_DESCRIPTION,
    FaceOut,
    IdentityRef,
)
from service.faces.types import EmbeddedFace
from service.gallery import Candidate, IdentityDetails
from service.gallery.fpir import FpirThreshold
from service.gallery.interface import FaceRecord, Identity
from service.gallery.records import (
    MAX_METADATA_DEPTH,
    metadata_shape,
)

log = logging.getLogger(__name__)


class EnrolledFaceRecord(BaseModel):
    """An enrolled face as stored: no image, only its embedding (not returned) and origin."""

    face_id: str
    model: str = Field(description="Model that made the embedding.")
    current_model: bool = Field(description="False: made by another pack; re-enrol to use it.")
    quality: float = Field(
        description="The embedding's norm at enrolment (quality.embedding_norm)."
    )
    det_score: float
    image_sha256: str = Field(description="sha256 of the uploaded photo (the photo is not kept).")
    created_at: str

    @classmethod
    def of(cls, face: FaceRecord, current_model: str) -> EnrolledFaceRecord:
        return cls(
            face_id=face.face_id,
            model=face.model_id,
            current_model=face.model_id == current_model,
            quality=round(face.quality, 4),
            det_score=round(face.det_score, 4),
            image_sha256=face.image_sha256,
            created_at=face.created_at,
        )


def _readable_metadata(identity: Identity) -> dict[str, Any] | None:
    """Stored metadata, or None when it is nested deeper than the API accepts (a record written
    before the depth limit existed): one such record must not break every page it is on."""
    depth, _ = metadata_shape(identity.metadata)
    if depth <= MAX_METADATA_DEPTH:
        return identity.metadata
    log.warning(
        "identity %s: stored metadata is nested %d levels deep (limit %d); answered as null",
        identity.id,
        depth,
        MAX_METADATA_DEPTH,
    )
    return None


class IdentitySummary(BaseModel):
    id: str
    name: str
    metadata: dict[str, Any] | None = Field(
        description="Your JSON object; null only for a record stored before the nesting limit "
        "existed whose metadata is deeper than it (replace it with PATCH)."
    )
    created_at: str
    updated_at: str
    face_count: int

    @classmethod
    def of(cls, identity: Identity) -> IdentitySummary:
        return cls(
            id=identity.id,
            name=identity.name,
            metadata=_readable_metadata(identity),
            created_at=identity.created_at,
            updated_at=identity.updated_at,
            face_count=identity.face_count,
        )


class IdentityOut(IdentitySummary):
    faces: list[EnrolledFaceRecord]

    @classmethod
    def of_details(cls, details: IdentityDetails, current_model: str) -> IdentityOut:
        summary = IdentitySummary.of(details.identity).model_dump()
        summary["face_count"] = len(details.faces)
        faces = [EnrolledFaceRecord.of(face, current_model) for face in details.faces]
        return cls(**summary, faces=faces)


class IdentityPage(BaseModel):
    items: list[IdentitySummary]
    total: int = Field(description="Identities in the gallery.")
    limit: int
    offset: int


class EnrolledFace(FaceOut):
    """The face that was enrolled: where it is in the photo, its quality, and its new id."""

    face_id: str
    identity_id: str
    model: str
    image_sha256: str
    created_at: str

    @classmethod
    def of_enrolment(cls, face: EmbeddedFace, record: FaceRecord) -> EnrolledFace:
        base = FaceOut.of(face).model_dump()
        return cls(
            **base,
            face_id=record.face_id,
            identity_id=record.identity_id,
            model=record.model_id,
            image_sha256=record.image_sha256,
            created_at=record.created_at,
        )


class CandidateOut(BaseModel):
    identity_id: str
    name: str
    similarity: float = Field(description="Cosine similarity of the query and face_id.")
    face_id: str = Field(description="The identity's enrolled face that matched best.")

    @classmethod
    def of(cls, candidate: Candidate) -> CandidateOut:
        return cls(
            identity_id=candidate.identity_id,
            name=candidate.name,
            similarity=round(candidate.similarity, 6),
            face_id=candidate.face_id,
        )


class IdentifyResult(BaseModel):
    face: FaceOut
    identity: IdentityRef | None = Field(
        description="Best candidate if its similarity reaches the threshold; null = unknown."
    )
    candidates: list[CandidateOut] = Field(
        description="Best face of each identity, ranked; for a key without `gallery:read`, "
        "only those at or above FACEVERIFY_IDENTIFY_CANDIDATE_FLOOR."
    )


class FpirOut(BaseModel):
    """The false-positive identification rate behind an /identify threshold."""

    target: float = Field(description="The FPIR asked for (`target_fpir`).")
    estimate: float = Field(description="FPIR the threshold gives, as measured.")
    interval: tuple[float, float] = Field(description="95% interval of the estimate.")
    method: str = Field(
        description="`leave-one-out` (enrolled identities searched as strangers) or "
        "`pack-calibration` (a small gallery: the pack's FMR calibration, independent scores)."
    )
    gallery_size: int = Field(description="Identities the estimate was measured against.")
    probes: int = Field(description="Enrolled identities searched as strangers.")

    @classmethod
    def of(cls, found: FpirThreshold) -> FpirOut:
        return cls(
            target=found.target_fpir,
            estimate=round(found.fpir, 6),
            interval=(round(found.fpir_low, 6), round(found.fpir_high, 6)),
            method=found.method,
            gallery_size=found.gallery_size,
            probes=found.probes,
        )


class IdentifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "buffalo_l@2e1a3c4d5f6a",
                    "threshold": 0.4,
                    "threshold_source": "pack default",
                    "results": [
                        {
                            "face": {
                                "box": [112.4, 80.1, 231.9, 238.6],
                                "landmarks": [
                                    [146.2, 145.0],
                                    [201.3, 144.1],
                                    [175.0, 177.9],
                                    [151.8, 206.4],
                                    [196.7, 205.5],
                                ],
                                "score": 0.87,
                                "quality": QUALITY_EXAMPLE,
                            },
                            "identity": None,
                            "candidates": [
                                {
                                    "identity_id": "4f1c0d0e8b3a4f7e9a2b6c5d4e3f2a1b",
                                    "name": "Ada Lovelace",
                                    "similarity": 0.2113,
                                    "face_id": "9a8b7c6d5e4f40312a1b0c9d8e7f6a5b",
                                }
                            ],
                        }
                    ],
                    "timings_ms": {"decode": 8.0, "detect": 40.2, "embed": 17.9, "search": 0.4},
                }
            ]
        }
    )

    model: str
    threshold: float = Field(description="identity is set when similarity ≥ threshold.")
    threshold_source: str = Field(description=THRESHOLD_SOURCE_DESCRIPTION)
    fpir: FpirOut | None = Field(
        None, description="With `target_fpir`: how the threshold was measured on the gallery."
    )
    results: list[IdentifyResult] = Field(description="One per face (largest first).")
    timings_ms: dict[str, float]
