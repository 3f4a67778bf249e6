"""Passive liveness: is the face in front of the camera, or a print or a screen held up to it?

A presentation-attack detection (PAD) stage for the faces a route uses. For each face and each
liveness model of the pack (MiniFASNet V2 and V1SE, see `training.liveness`), the crop is the
detector's box enlarged `scale` times around its centre, shifted back inside the image (and
shrunk if it cannot fit), and resized to the model's input; each model scores the crops of all
faces in one call; a face's score is the live-class softmax averaged over the models, and it
is judged live when the score reaches the pack's `liveness.threshold`.

The crop rule is the one the models were trained with (Silent-Face-Anti-Spoofing's
`CropImage`): the box is (x, y, w, h), the side is capped at what the image holds, and the
corners are truncated to whole pixels. Our boxes come from SCRFD, not from the RetinaFace the
source used; docs/liveness.md gives the measured effect.

A single image cannot prove presence: see docs/liveness.md for what this stage does not catch.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from service.faces.types import DetectedFace, Liveness
from service.packs import LivenessModelSpec, LivenessSpec

# Faces per model call; an 80x80x3 float32 crop is 77 KB.
MAX_BATCH = 64
FaceCrops = tuple[np.ndarray, ...]  # one face's crops, one per liveness model


def liveness_box(
    box: np.ndarray, scale: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Inclusive pixel corners (x1, y1, x2, y2) of the crop for a face box (x1, y1, x2, y2)
    in an image of `width` x `height`: the box enlarged `scale` times about its centre (less
    when the image cannot hold that), moved to lie inside the image."""
    box_w = max(float(box[2] - box[0]), 1.0)
    box_h = max(float(box[3] - box[1]), 1.0)
    scale = min((height - 1) / box_h, (width - 1) / box_w, scale)
    new_w, new_h = box_w * scale, box_h * scale
    centre_x, centre_y = float(box[0]) + box_w / 2, float(box[1]) + box_h / 2
    left, top = centre_x - new_w / 2, centre_y - new_h / 2
    right, bottom = centre_x + new_w / 2, centre_y + new_h / 2
    if left < 0:
        right, left = right - left, 0.0
    if top < 0:
        bottom, top = bottom - top, 0.0
    if right > width - 1:
        left, right = left - (right - width + 1), width - 1.0
    if bottom > height - 1:
        top, bottom = top - (bottom - height + 1), height - 1.0
    return int(left), int(top), int(right), int(bottom)


def liveness_crop(image: np.ndarray, box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """The `size` x `size` BGR crop a liveness model of crop `scale` takes for `box`."""
    height, width = image.shape[:2]
    left, top, right, bottom = liveness_box(box, scale, width, height)
    region = image[max(top, 0) : bottom + 1, max(left, 0) : right + 1]
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)


def crop_side_in(face: DetectedFace, scale: float, factor: float = 1.0) -> float:
    """The shorter side of the unclipped liveness crop, in pixels of an image `factor` times
    smaller than the one the face box is measured in (each side is resized to the model's
    input on its own, so the shorter one decides whether the crop is enlarged)."""
    return min(face.width, face.height) * scale / factor


class LivenessChecker:
    """Runs a pack's liveness models on the faces of a decoded BGR image."""

    def __init__(self, sessions: Sequence[ort.InferenceSession], spec: LivenessSpec) -> None:
        if len(sessions) != len(spec.models):
            raise ValueError(f"{len(sessions)} sessions for {len(spec.models)} liveness models")
        self._sessions = list(sessions)
        self.spec = spec
        self.threshold = spec.threshold
        self.model = "+".join(f"{m.variant or m.file}@{(m.sha256 or '')[:8]}" for m in spec.models)

    @property
    def smallest_input(self) -> int:
        return min(model.input_size for model in self.spec.models)

    def crops_fit(self, faces: Sequence[DetectedFace], factor: float) -> bool:
        """Whether every crop, taken from an image `factor` times smaller, keeps at least the
        models' input resolution (so a reduced decode loses no texture the models see)."""
        smallest = min(model.scale for model in self.spec.models)
        return all(crop_side_in(face, smallest, factor) >= self.smallest_input for face in faces)

    def _probabilities(
        self, session: ort.InferenceSession, model: LivenessModelSpec, crops: list[np.ndarray]
    ) -> np.ndarray:
        """Softmax over the classes, (n, classes), in calls of at most `MAX_BATCH` crops."""
        name = session.get_inputs()[0].name
        rows = []
        for start in range(0, len(crops), MAX_BATCH):
            batch = np.stack(crops[start : start + MAX_BATCH]).astype(np.float32)
            if model.color_order == "RGB":
                batch = batch[..., ::-1]
            batch = (batch - model.mean) / model.std
            blob = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
            rows.append(session.run(None, {name: blob})[0])
        logits = np.concatenate(rows).astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def crops(
        self, image: np.ndarray, faces: Sequence[DetectedFace], scale: tuple[float, float] = (1, 1)
    ) -> list[FaceCrops]:
        """Per face, one crop per model (in the pack's order). Face boxes are in pixels of an
        image `scale` (x, y) times larger than `image` (a reduced decode)."""
        factors = np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        return [
            tuple(
                liveness_crop(image, face.box / factors, model.scale, model.input_size)
                for model in self.spec.models
            )
            for face in faces
        ]

    def score_crops(self, items: list[FaceCrops]) -> list[float]:
        """Averaged live probability per face, one call per model for all `items` (a
        `MicroBatcher` may join the items of several requests here)."""
        if not items:
            return []
        total = np.zeros(len(items))
        for index, (session, model) in enumerate(
            zip(self._sessions, self.spec.models, strict=True)
        ):
            crops = [face_crops[index] for face_crops in items]
            total += self._probabilities(session, model, crops)[:, self.spec.live_class]
        return [float(score) for score in total / len(self._sessions)]

    def scores(
        self, image: np.ndarray, faces: Sequence[DetectedFace], scale: tuple[float, float] = (1, 1)
    ) -> np.ndarray:
        """Averaged live probability per face (see `crops` for `scale`)."""
        return np.array(self.score_crops(self.crops(image, faces, scale)))

    def verdict(self, score: float) -> Liveness:
        return Liveness(float(score), bool(score >= self.threshold), self.threshold, self.model)

    def check(
        self, image: np.ndarray, faces: Sequence[DetectedFace], scale: tuple[float, float] = (1, 1)
    ) -> list[Liveness]:
        """The verdict for each face, in order."""
        return [self.verdict(score) for score in self.scores(image, faces, scale)]
