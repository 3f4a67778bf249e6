"""Face detection with SCRFD: boxes, scores and the 5 landmarks alignment needs.

The onnxruntime session is ours (our providers and threads); the letterbox, the decoding of
SCRFD's anchor outputs and NMS are in `service.faces.scrfd`, so the service does not import
insightface. Works with detectors whose batch dimension is fixed at 1 and with those that
have a dynamic batch axis (`detect_many` then runs several images in one model call).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

from service.faces.scrfd import Letterbox, ScrfdDecoder, ScrfdLayout
from service.faces.types import DetectedFace
from service.packs import DetectorSpec


@dataclass(frozen=True)
class DetectorOptions:
    """Detector input size (pixels, square, multiple of 32) and minimum detection score."""

    input_size: int = 640
    score_threshold: float = 0.5


def _fixed_dim(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class FaceDetector:
    """SCRFD face detector over BGR uint8 images."""

    def __init__(
        self, session: ort.InferenceSession, spec: DetectorSpec, options: DetectorOptions
    ) -> None:
        if options.input_size % 32:
            raise ValueError(
                f"detector input size must be a multiple of 32, not {options.input_size}"
            )
        self._session = session
        self._spec = spec
        self._options = options
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        outputs = session.get_outputs()
        self._output_names = [output.name for output in outputs]
        self._decoder = ScrfdDecoder(
            ScrfdLayout.from_output_count(len(outputs)), options.score_threshold
        )
        # Outputs with a leading batch axis ([B, N, k]) versus SCRFD's flat [N, k].
        self._batched_outputs = len(outputs[0].shape) == 3
        batch, _, height, width = (list(model_input.shape) + [None] * 4)[:4]
        self.max_batch = 0 if _fixed_dim(batch) is None else int(batch)  # 0: dynamic
        fixed_width, fixed_height = _fixed_dim(width), _fixed_dim(height)
        if fixed_width and fixed_height:  # a detector exported for one input size
            self._input_size = (fixed_width, fixed_height)
        else:
            self._input_size = (options.input_size, options.input_size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the image is letterboxed into."""
        return self._input_size

    @property
    def batches_images(self) -> bool:
        """Whether one model call can take several images (a dynamic or >1 batch axis)."""
        return self._batched_outputs and self.max_batch != 1

    def input_blob(self, images: list[np.ndarray]) -> np.ndarray:
        """The (n, 3, H, W) float32 model input for BGR images, each letterboxed."""
        width, height = self._input_size
        return self._blob(
            [Letterbox.fit(i.shape[1], i.shape[0], width, height).apply(i) for i in images]
        )

    def _blob(self, canvases: list[np.ndarray]) -> np.ndarray:
        return cv2.dnn.blobFromImages(
            canvases,
            1.0 / self._spec.std,
            self._input_size,
            (self._spec.mean,) * 3,
            swapRB=self._spec.color_order == "RGB",
        )

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces scoring at least the threshold, largest box first."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for several images; one model call when the detector batches images."""
        width, height = self._input_size
        boxes = [Letterbox.fit(img.shape[1], img.shape[0], width, height) for img in images]
        canvases = [box.apply(img) for box, img in zip(boxes, images, strict=True)]
        step = (self.max_batch or len(images)) if self.batches_images else 1
        results: list[list[DetectedFace]] = []
        for start in range(0, len(images), step):
            chunk = canvases[start : start + step]
            outputs = self._session.run(self._output_names, {self._input_name: self._blob(chunk)})
            for offset in range(len(chunk)):
                per_image = [out[offset] for out in outputs] if self._batched_outputs else outputs
                results.append(self._faces(per_image, boxes[start + offset]))
        return results

    def _faces(self, outputs: list[np.ndarray], letterbox: Letterbox) -> list[DetectedFace]:
        width, height = self._input_size
        found = self._decoder.decode(outputs, height, width)
        boxes = letterbox.to_image(found.boxes)
        landmarks = letterbox.to_image(found.landmarks.reshape(-1, 10)).reshape(-1, 5, 2)
        faces = [
            DetectedFace(box=boxes[i], landmarks=landmarks[i], score=float(found.scores[i]))
            for i in range(found.scores.shape[0])
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)
