"""Synthetic test images, importable from any test module (conftest.py is not: several exist)."""

from __future__ import annotations

import cv2
import numpy as np


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    """Encode a BGR image to file bytes."""
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def noise_image(size: int = 640, seed: int = 0) -> np.ndarray:
    """A BGR test image: smooth random colours, so that different seeds embed differently."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
