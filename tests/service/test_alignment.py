"""Alignment: landmarks map onto the ArcFace template by a similarity transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.faces.alignment import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    align_face,
    similarity_matrix,
    template_for,
)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def test_landmarks_already_on_template_give_identity_matrix():
    matrix = similarity_matrix(ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_known_similarity_is_recovered_as_its_inverse():
    # Landmarks = template moved by a known similarity; alignment must undo exactly that.
    forward = _similarity(scale=2.5, degrees=17.0, tx=300.0, ty=120.0)
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    expected = cv2.invertAffineTransform(forward)
    np.testing.assert_allclose(similarity_matrix(landmarks), expected, atol=1e-4)


def test_matrix_is_a_similarity_not_a_general_affine():
    rng = np.random.default_rng(1)
    landmarks = ARCFACE_TEMPLATE * 3 + rng.normal(0, 4, (5, 2)) + 200
    a, b = similarity_matrix(landmarks)[:, :2]
    assert a[0] == pytest.approx(b[1], abs=1e-5)  # same scale on both axes
    assert a[1] == pytest.approx(-b[0], abs=1e-5)  # pure rotation, no shear


def test_template_scales_with_crop_size():
    np.testing.assert_allclose(template_for(224), ARCFACE_TEMPLATE * 2)


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_matrix(np.zeros((5, 2)))


def test_synthetic_face_lands_on_template():
    # Draw five dots where a rotated, scaled face has its landmarks; after alignment each dot
    # must be found at its template position in the 112x112 crop.
    forward = _similarity(scale=3.0, degrees=-25.0, tx=250.0, ty=180.0)
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    image = np.zeros((720, 720, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 6, (255, 255, 255), -1)
    crop = align_face(image, landmarks)
    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    count, _, _, centroids = cv2.connectedComponentsWithStats((gray > 127).astype(np.uint8))
    assert count - 1 == 5  # background + five dots
    found = centroids[1:]
    for point in ARCFACE_TEMPLATE:
        nearest = np.min(np.linalg.norm(found - point, axis=1))
        assert nearest < 1.0, f"no dot near template point {point}"
