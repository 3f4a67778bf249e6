"""Values passed between pipeline stages.

Images inside the service are `np.ndarray` uint8 of shape (H, W, 3) in **BGR** order (OpenCV's
and insightface's convention); stages that feed a model convert to the model's colour order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.faces.liveness import Liveness
    from service.faces.quality import FaceQuality


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


@dataclass(frozen=True)
class EmbeddedFace:
    """A detected face with its L2-normalised embedding and its quality assessment
    (service/faces/quality.py; `quality.embedding_norm` is the norm before normalisation)."""

    face: DetectedFace
    embedding: np.ndarray  # (d,) float32, unit norm
    quality: FaceQuality
    liveness: Liveness | None = None  # only when the route asked for it
