"""Controlled degradations of real photos, for the quality tests and bench/quality_levels.py.

Each takes a BGR uint8 image and a strength. Blur
strength is in pixels of the aligned 112x112 crop (scaled to the face's size in the photo), so
one strength means the same to faces of any size.
"""

from __future__ import annotations

import cv2
import numpy as np

# Inter-ocular distance of the 112x112 ArcFace template (service/faces/alignment.py), pixels.
TEMPLATE_INTER_OCULAR = 35.24


def gaussian_blur(image: np.ndarray, sigma_crop: float, inter_ocular: float) -> np.ndarray:
    if sigma_crop <= 0:
        return image
    sigma = sigma_crop * inter_ocular / TEMPLATE_INTER_OCULAR
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)


def darken(image: np.ndarray, gain: float) -> np.ndarray:
    """Multiply every value by `gain` < 1 (less light)."""
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def over_expose(image: np.ndarray, gain: float) -> np.ndarray:
    """Multiply by `gain` > 1 and clip (blown highlights)."""
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, target_inter_ocular: float, inter_ocular: float) -> np.ndarray:
    """Shrink the photo so the face's eyes are `target_inter_ocular` pixels apart."""
    factor = min(1.0, target_inter_ocular / inter_ocular)
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, on a canvas large enough to keep every corner."""
    if degrees == 0:
        return image
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(height * sin + width * cos), int(height * cos + width * sin)
    matrix[0, 2] += new_w / 2 - width / 2
    matrix[1, 2] += new_h / 2 - height / 2
    return cv2.warpAffine(image, matrix, (new_w, new_h), borderValue=(0, 0, 0))


def half_face(image: np.ndarray, landmarks: np.ndarray, keep: float) -> np.ndarray:
    """Crop the photo at a vertical line through the face, keeping what lies right of it: the
    line is `keep` inter-ocular distances left of the right eye (1.0 = through the left eye,
    0.5 = the nose line, a half face)."""
    left_x, right_x = float(landmarks[0][0]), float(landmarks[1][0])
    cut = max(0, round(right_x - keep * (right_x - left_x)))
    return np.ascontiguousarray(image[:, cut:])
