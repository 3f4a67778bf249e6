"""Pydantic models of the HTTP API (responses; uploads are multipart form fields)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.faces.types import (
    DetectedFace,
    EmbeddedFace,
    FaceQuality,
    Liveness,
    QualityLevel,
    QualityReason,
)

QUALITY_EXAMPLE = {
    "level": "high",
    "reasons": [],
    "detection_score": 0.87,
    "inter_ocular_px": 55.1,
    "yaw": -3.1,
    "pitch": 4.0,
    "roll": -0.9,
    "sharpness": 1462.3,
    "brightness": 141.7,
    "embedding_norm": 21.4,
}
_FACE_EXAMPLE = {
    "box": [112.4, 80.1, 231.9, 238.6],
    "landmarks": [[146.2, 145.0], [201.3, 144.1], [175.0, 177.9], [151.8, 206.4], [196.7, 205.5]],
    "score": 0.87,
    "quality": QUALITY_EXAMPLE,
}


THRESHOLD_SOURCE_DESCRIPTION = (
    "Where the threshold came from: `request` (the `threshold` field), `calibration:<fmr>` (the "
    "pack's threshold for the request's `target_fmr`), `fpir:<rate>@n=<identities>` (/identify: "
    "the threshold measured on the gallery for `target_fpir` or FACEVERIFY_IDENTIFY_FPIR), "
    "`settings` (FACEVERIFY_THRESHOLD) or `pack default`."
)


def _rounded(values, digits: int = 2) -> list:
    return [round(float(v), digits) for v in values]


class QualityOut(BaseModel):
    """How far a face can be trusted (docs/quality.md): an overall `level`, the `reasons` for a
    `low` one, and the measurements behind them."""

    model_config = ConfigDict(json_schema_extra={"examples": [QUALITY_EXAMPLE]})

    level: QualityLevel
    reasons: list[QualityReason] = Field(description="Why the level is low; empty otherwise.")
    detection_score: float
    inter_ocular_px: float = Field(description="Pixels between the eyes in the photo.")
    yaw: float = Field(description="Degrees, estimated from the 5 landmarks.")
    pitch: float = Field(description="Degrees, estimated from the 5 landmarks.")
    roll: float = Field(description="Degrees: the eye line's angle.")
    sharpness: float = Field(description="Variance of the Laplacian of the aligned crop.")
    brightness: float = Field(description="Mean grey level (0-255) of the aligned face.")
    embedding_norm: float = Field(description="The embedding's norm before normalisation.")

    @classmethod
    def of(cls, quality: FaceQuality) -> QualityOut:
        return cls(
            level=quality.level,
            reasons=list(quality.reasons),
            detection_score=round(quality.detection_score, 4),
            inter_ocular_px=round(quality.inter_ocular_px, 2),
            yaw=round(quality.pose.yaw, 2),
            pitch=round(quality.pose.pitch, 2),
            roll=round(quality.pose.roll, 2),
            sharpness=round(quality.sharpness, 2),
            brightness=round(quality.brightness, 2),
            embedding_norm=round(quality.embedding_norm, 4),
        )


class LivenessOut(BaseModel):
    """Passive liveness verdict (docs/liveness.md): the live probability averaged over the
    pack's liveness models, and `live` = `score >= threshold`."""

    score: float
    live: bool
    threshold: float
    model: str

    @classmethod
    def of(cls, liveness: Liveness) -> LivenessOut:
        return cls(
            score=round(liveness.score, 4),
            live=liveness.live,
            threshold=liveness.threshold,
            model=liveness.model,
        )


class FaceOut(BaseModel):
    """One face: box `[x1, y1, x2, y2]` and landmarks (left eye, right eye, nose, left and
    right mouth corner) in pixels of the uploaded image, detection score, and quality
    (absent from /detect)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_FACE_EXAMPLE]})

    box: list[float] = Field(min_length=4, max_length=4)
    landmarks: list[list[float]] = Field(min_length=5, max_length=5)
    score: float
    quality: QualityOut | None = None
    liveness: LivenessOut | None = Field(None, description="With `liveness`: the verdict.")

    @classmethod
    def of(cls, face: EmbeddedFace | DetectedFace) -> FaceOut:
        detected = face.face if isinstance(face, EmbeddedFace) else face
        quality = QualityOut.of(face.quality) if isinstance(face, EmbeddedFace) else None
        verdict = face.liveness if isinstance(face, EmbeddedFace) else None
        return cls(
            box=_rounded(detected.box),
            landmarks=[_rounded(point) for point in detected.landmarks],
            score=round(detected.score, 4),
            quality=quality,
            liveness=LivenessOut.of(verdict) if verdict is not None else None,
        )


class EmbeddedFaceOut(FaceOut):
    """A face and its L2-normalised embedding."""

    embedding: list[float]

    @classmethod
    def of(cls, face: EmbeddedFace) -> EmbeddedFaceOut:  # type: ignore[override]
        base = FaceOut.of(face).model_dump()
        return cls(**base, embedding=[float(v) for v in face.embedding])


class IdentityRef(BaseModel):
    id: str
    name: str


class VerifyResponse(BaseModel):
    """Whether two faces (or a face and an enrolled identity) are the same person."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "match": True,
                    "similarity": 0.7312,
                    "threshold": 0.4,
                    "threshold_source": "pack default",
                    "model": "buffalo_l@2e1a3c4d5f6a",
                    "faces": [_FACE_EXAMPLE, _FACE_EXAMPLE],
                    "timings_ms": {
                        "decode": 9.1,
                        "detect": 41.0,
                        "align": 0.4,
                        "embed": 18.2,
                        "total": 71.5,
                    },
                }
            ]
        }
    )

    match: bool
    similarity: float = Field(description="Cosine similarity of the two embeddings, in [-1, 1].")
    threshold: float = Field(description="Threshold the decision used: match = similarity ≥ it.")
    threshold_source: str = Field(description=THRESHOLD_SOURCE_DESCRIPTION)
    model: str = Field(description="Model pack (name@recognizer-sha256-prefix).")
    faces: list[FaceOut] = Field(description="The face used from each image.")
    timings_ms: dict[str, float]
    identity: IdentityRef | None = Field(
        None,
        description="Set when verifying against one, for a key with `gallery:read` (or "
        "without keys).",
    )
    face_id: str | None = Field(
        None, description="Enrolled face that matched best (same condition as `identity`)."
    )


class EmbedResponse(BaseModel):
    model: str
    faces: list[EmbeddedFaceOut]
    timings_ms: dict[str, float] = {}


class DetectResponse(BaseModel):
    faces: list[FaceOut]
    width: int
    height: int
    timings_ms: dict[str, float] = {}


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model: str
    embedding_size: int
    provider: str
    threshold: float
