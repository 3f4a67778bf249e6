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
    """Detector input size (pixels, the longest side, multiple of 32), minimum detection
    score, and whether the input may follow the image's aspect (`fit_aspect`): a 4:3 photo
    then goes in as 640x480 instead of 640x640 with a black band, a quarter less work."""

    input_size: int = 640
    score_threshold: float = 0.5
    fit_aspect: bool = True


# Detector inputs are multiples of the largest SCRFD stride.
INPUT_MULTIPLE = 32


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
        self.fits_aspect = (
            options.fit_aspect
            and not (fixed_width or fixed_height)
            and self._outputs_follow_input()
        )

    def _outputs_follow_input(self) -> bool:
        """Whether the outputs grow with the input (real SCRFD graphs), probed once on a
        small non-square input; a graph with fixed-size outputs gets the square input."""
        width, height = 3 * INPUT_MULTIPLE, 2 * INPUT_MULTIPLE
        probe = np.zeros((1, 3, height, width), np.float32)
        try:
            scores = self._session.run(self._output_names[:1], {self._input_name: probe})[0]
        except Exception:  # any refusal means: keep the square input
            return False
        stride = self._decoder.layout.strides[0]
        expected = (height // stride) * (width // stride) * self._decoder.layout.anchors_per_cell
        return scores.size == expected

    def input_size_for(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the detector input for an image of that size: the configured
        square, or with `fits_aspect` the fitted image rounded up to multiples of 32."""
        if not self.fits_aspect:
            return self._input_size
        side = self._input_size[0]
        scale = side / max(width, height)
        return (
            min(side, _round_up(width * scale, INPUT_MULTIPLE)),
            min(side, _round_up(height * scale, INPUT_MULTIPLE)),
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the image is letterboxed into."""
        return self._input_size

    @property
    def batches_images(self) -> bool:
        """Whether one model call can take several images (a dynamic or >1 batch axis)."""
        return self._batched_outputs and self.max_batch != 1

    def input_blob(self, images: list[np.ndarray]) -> np.ndarray:
        """The (n, 3, H, W) float32 model input for BGR images, each letterboxed into the
        square input (images of one batch share one input size)."""
        width, height = self._input_size
        return self._blob(
            [Letterbox.fit(i.shape[1], i.shape[0], width, height).apply(i) for i in images]
        )

    def _blob(self, canvases: list[np.ndarray]) -> np.ndarray:
        height, width = canvases[0].shape[:2]
        return cv2.dnn.blobFromImages(
            canvases,
            1.0 / self._spec.std,
            (width, height),
            (self._spec.mean,) * 3,
            swapRB=self._spec.color_order == "RGB",
        )

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces scoring at least the threshold, largest box first."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """`detect` for several images; images sharing an input size share a model call when
        the detector batches images."""
        boxes = [
            Letterbox.fit(
                img.shape[1], img.shape[0], *self.input_size_for(img.shape[1], img.shape[0])
            )
            for img in images
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, box in enumerate(boxes):
            groups.setdefault((box.input_width, box.input_height), []).append(index)
        step = (self.max_batch or len(images)) if self.batches_images else 1
        results: list[list[DetectedFace]] = [[] for _ in images]
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                blob = self._blob([boxes[i].apply(images[i]) for i in chunk])
                outputs = self._session.run(self._output_names, {self._input_name: blob})
                for offset, index in enumerate(chunk):
                    per_image = (
                        [out[offset] for out in outputs] if self._batched_outputs else outputs
                    )
                    results[index] = self._faces(per_image, boxes[index])
        return results

    def _faces(self, outputs: list[np.ndarray], letterbox: Letterbox) -> list[DetectedFace]:
        found = self._decoder.decode(outputs, letterbox.input_height, letterbox.input_width)
        boxes = letterbox.to_image(found.boxes)
        landmarks = letterbox.to_image(found.landmarks.reshape(-1, 10)).reshape(-1, 5, 2)
        faces = [
            DetectedFace(box=boxes[i], landmarks=landmarks[i], score=float(found.scores[i]))
            for i in range(found.scores.shape[0])
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(np.ceil(value / multiple - 1e-9)) * multiple)
