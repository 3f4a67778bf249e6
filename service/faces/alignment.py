"""Five-point face alignment to the 112x112 ArcFace template.

The template is defined here and nowhere else; training data (InsightFace's aligned sets) and
every ArcFace-family recognizer assume it.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

ALIGNED_SIZE = 112
# Reference landmark positions in a 112x112 crop (left eye, right eye, nose tip, left and right
# mouth corners), from the ArcFace / InsightFace face-alignment convention.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template_for(size: int = ALIGNED_SIZE) -> np.ndarray:
    """The template scaled to a square crop of `size` pixels."""
    return ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)


def similarity_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, translation) taking the 5 landmarks
    onto the template, least squares (Umeyama)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    transform = SimilarityTransform.from_estimate(points, template_for(size).astype(np.float64))
    if not transform:
        raise ValueError(f"landmarks are degenerate, no similarity transform: {points.tolist()}")
    return transform.params[:2].astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Crop one face: warp `image` so its landmarks land on the template; (size, size, 3)."""
    return warp_face(image, similarity_matrix(landmarks, size), size)


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The (size, size, 3) crop a `similarity_matrix` describes."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
