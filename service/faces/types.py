"""Values passed between pipeline stages.

Images inside the service are `np.ndarray` uint8 of shape (H, W, 3) in **BGR** order (OpenCV's
and insightface's convention); stages that feed a model convert to the model's colour order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One detection: box (x1, y1, x2, y2) and 5 landmarks (left eye, right eye, nose, mouth
    left, mouth right) in image pixels, plus the detector's score."""

    box: np.ndarray  # (4,) float32
    landmarks: np.ndarray  # (5, 2) float32
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


class QualityLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return LEVEL_ORDER.index(self)


LEVEL_ORDER = (QualityLevel.LOW, QualityLevel.MEDIUM, QualityLevel.HIGH)


class QualityReason(StrEnum):
    """Stable reason codes (part of the API)."""

    SMALL_FACE = "small_face"
    EXTREME_POSE = "extreme_pose"
    BLURRY = "blurry"
    UNDEREXPOSED = "underexposed"
    OVEREXPOSED = "overexposed"
    LOW_DETECTION_SCORE = "low_detection_score"
    LOW_EMBEDDING_NORM = "low_embedding_norm"


@dataclass(frozen=True)
class Pose:
    yaw: float  # degrees, + = the face turned to the image's right
    pitch: float  # degrees, + = looking down
    roll: float  # degrees, + = the eye line rotated clockwise in the image


@dataclass(frozen=True)
class FaceQuality:
    """Measurements of one face and what they add up to."""

    detection_score: float
    inter_ocular_px: float
    pose: Pose
    sharpness: float
    brightness: float
    embedding_norm: float
    level: QualityLevel
    reasons: tuple[QualityReason, ...] = field(default=())

    def at_least(self, level: QualityLevel) -> bool:
        return self.level.rank >= level.rank


@dataclass(frozen=True)
class Liveness:
    """The liveness verdict on one face (service/faces/liveness.py): averaged live
    probability, the decision and what made it."""

    score: float
    live: bool
    threshold: float
    model: str


@dataclass(frozen=True)
class EmbeddedFace:
    """A detected face with its L2-normalised embedding and its quality assessment
    (service/faces/quality.py; `quality.embedding_norm` is the norm before normalisation)."""

    face: DetectedFace
    embedding: np.ndarray  # (d,) float32, unit norm
    quality: FaceQuality
    liveness: Liveness | None = None  # only when the route asked for it
