"""Pydantic models of the gallery API: identities, enrolled faces and 1:N identification."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import (
    QUALITY_EXAMPLE,
    THRESHOLD_SOURCE_DESCRIPTION,
    FaceOut,
    IdentityRef,
)
from service.faces.types import EmbeddedFace
from service.gallery import Candidate, IdentityDetails
from service.gallery.fpir import FpirThreshold
from service.gallery.store import FaceRecord, Identity

# Identity names are labels for people, not documents; 200 characters covers any real name.
MAX_NAME_LENGTH = 200
# Metadata is a small JSON object of the client's own keys (employee number, notes...); the
# cap keeps one identity row small and bounded whatever a client sends.
MAX_METADATA_BYTES = 16 * 1024
# Byte size alone does not bound the cost of a document: 520 bytes of "[[[[..." nest 256
# levels, past what the JSON serialiser will write back. Metadata is a record of the
# client's own fields, so a few levels and a few hundred keys (all levels together) are ample.
MAX_METADATA_DEPTH = 10
MAX_METADATA_KEYS = 500

log = logging.getLogger(__name__)

_NAME = Field(min_length=1, max_length=MAX_NAME_LENGTH, description="Display name.")
_METADATA_DESCRIPTION = (
    f"Free JSON object of your own: at most {MAX_METADATA_BYTES} bytes, "
    f"{MAX_METADATA_DEPTH} levels of nesting and {MAX_METADATA_KEYS} keys."
)


def metadata_shape(metadata: Any) -> tuple[int, int]:
    """(depth, keys) of a JSON value: objects and arrays nested inside the top-level object
    (the object itself is depth 1), and object keys counted over every level. Iterative, so
    any depth is measured without recursion."""
    depth, keys = 0, 0
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            keys += len(value)
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth, keys


def _check_name(name: str | None) -> str | None:
    if name is not None and not name.strip():
        raise ValueError("name must not be blank")
    return None if name is None else name.strip()


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """Metadata must come back as it was sent, so refuse what JSON answers cannot carry:
    unpaired surrogates ("\\ud800" is legal JSON text but not Unicode, and no UTF-8 answer
    can hold it) and NaN / Infinity (Python reads them, JSON has no such numbers)."""
    if metadata is None:
        return None
    depth, keys = metadata_shape(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(
            f"metadata is nested {depth} levels deep; the limit is {MAX_METADATA_DEPTH}"
        )
    if keys > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {keys} keys; the limit is {MAX_METADATA_KEYS}")
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            "metadata must be Unicode text: it holds an unpaired surrogate "
            f"({exc.object[exc.start : exc.end]!r})"
        ) from None
    except ValueError:
        raise ValueError("metadata numbers must be finite: NaN and Infinity are not JSON") from None
    if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is over {MAX_METADATA_BYTES} bytes of JSON")
    return metadata


class IdentityCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Ada Lovelace", "metadata": {"staff_id": 42}}]},
    )

    name: str = _NAME
    metadata: dict[str, Any] = Field(default_factory=dict, description=_METADATA_DESCRIPTION)

    _name = field_validator("name")(_check_name)
    _metadata = field_validator("metadata")(_check_metadata)


class IdentityUpdate(BaseModel):
    """Fields to change; absent fields keep their value. `metadata` replaces the whole object."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH)
    metadata: dict[str, Any] | None = Field(None, description=_METADATA_DESCRIPTION)

    _name = field_validator("name")(_check_name)
    _metadata = field_validator("metadata")(_check_metadata)


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


# Longest embedding POST /identities/{id}/embeddings accepts (the largest recognizers emit 512).
MAX_EMBEDDING_VALUES = 4096


class EmbeddingEnrol(BaseModel):
    """An embedding computed by another system with the loaded model, to enrol as a face."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, max_length=256, description="Model that made it (GET /readyz `model`)."
    )
    embedding: list[float] = Field(
        min_length=1,
        max_length=MAX_EMBEDDING_VALUES,
        description="The embedding, as the model output it (it is L2-normalised here).",
    )
