"""Face detection with SCRFD: boxes, scores and the 5 landmarks alignment needs.

Decoding of SCRFD's anchor outputs and NMS come from insightface's `SCRFD` class, fed with an
onnxruntime session we create (our providers and threads; never insightface's downloads).
It handles detectors whose batch dimension is fixed at 1 and letterboxes any image into the
square detector input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from insightface.model_zoo.scrfd import SCRFD

from service.faces.types import DetectedFace
from service.packs import DetectorSpec

# Intersection-over-union above which overlapping boxes are merged; insightface's default.
NMS_IOU_THRESHOLD = 0.4


@dataclass(frozen=True)
class DetectorOptions:
    """Detector input size (pixels, square, multiple of 32) and minimum detection score."""

    input_size: int = 640
    score_threshold: float = 0.5


class FaceDetector:
    """SCRFD face detector over a BGR uint8 image."""

    def __init__(
        self, session: ort.InferenceSession, spec: DetectorSpec, options: DetectorOptions
    ) -> None:
        if options.input_size % 32:
            raise ValueError(
                f"detector input size must be a multiple of 32, not {options.input_size}"
            )
        self._spec = spec
        self._options = options
        self._scrfd = SCRFD(session=session, static_shape_sessions=False)
        if not self._scrfd.use_kps:
            raise ValueError("the detector gives no landmarks; a 5-keypoint SCRFD is required")
        self._scrfd.input_mean = spec.mean
        self._scrfd.input_std = spec.std
        self._scrfd.prepare(
            0,
            input_size=(options.input_size, options.input_size),
            det_thresh=options.score_threshold,
            nms_thresh=NMS_IOU_THRESHOLD,
        )
        size = self._scrfd.static_input_size
        self._input_size = tuple(size) if size else (options.input_size, options.input_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the image is letterboxed into."""
        return self._input_size

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces scoring at least the threshold, largest box first."""
        # insightface's SCRFD swaps BGR→RGB itself; a BGR-trained detector gets the swap undone.
        pixels = image[:, :, ::-1] if self._spec.color_order == "BGR" else image
        boxes, keypoints = self._scrfd.detect(pixels, input_size=self._input_size)
        faces = [
            DetectedFace(
                box=boxes[i, :4].astype(np.float32),
                landmarks=keypoints[i].astype(np.float32),
                score=float(boxes[i, 4]),
            )
            for i in range(boxes.shape[0])
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)
