"""Small builders shared by the training tests (imported as `training_helpers`)."""

from __future__ import annotations

import cv2
import numpy as np


def solid_image(bgr: tuple[int, int, int], size: int = 112) -> np.ndarray:
    """A uniform BGR uint8 image."""
    return np.full((size, size, 3), bgr, dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless encoding, so a decoded image equals the original exactly."""
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()
