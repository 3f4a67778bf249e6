"""SCRFD's input letterbox and output decoding, in numpy: no insightface at run time.

An SCRFD detector predicts, for every anchor of every feature-pyramid level, a face score, the
distances from the anchor centre to the four box sides and the offsets of the 5 keypoints (all
in units of the level's stride). Decoding turns those into boxes and landmarks in detector-input
pixels; `Letterbox` maps them back to the image with separate x and y scales.

The conventions (strides, anchors per cell, anchor centres at cell corners, NMS) are those of
insightface's python-package `model_zoo/scrfd.py`; `tests/service/test_scrfd.py` checks parity
with it on real photos. insightface maps back with one scale taken from the height while it
floors the resized width, so its x error grows with the aspect ratio (+78 px at x = 7000 of an
8000 x 1137 image); keeping both scales here removes that error.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Intersection-over-union above which overlapping boxes are merged; insightface's default.
NMS_IOU_THRESHOLD = 0.4

# SCRFD variants by output count (insightface `SCRFD._init_vars`): outputs come as
# scores, box distances and (with keypoints) keypoint offsets, one per stride.
_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


@dataclass(frozen=True)
class ScrfdLayout:
    """Feature-pyramid strides, anchors per cell and whether keypoints are predicted."""

    strides: tuple[int, ...]
    anchors_per_cell: int
    has_keypoints: bool

    @classmethod
    def from_output_count(cls, count: int) -> ScrfdLayout:
        if count not in _LAYOUTS:
            raise ValueError(f"an SCRFD detector has 6, 9, 10 or 15 outputs, not {count}")
        strides, anchors, keypoints = _LAYOUTS[count]
        return cls(strides, anchors, keypoints)


@dataclass(frozen=True)
class Letterbox:
    """An image resized into the top-left corner of a (height, width) detector input.

    `scale_x` and `scale_y` are the resized size over the original size on each axis; they
    differ slightly because each side is rounded to whole pixels.
    """

    input_width: int
    input_height: int
    resized_width: int
    resized_height: int
    scale_x: float
    scale_y: float

    @classmethod
    def fit(cls, width: int, height: int, input_width: int, input_height: int) -> Letterbox:
        """Keep the aspect ratio; the limiting side fills the input, the other is floored
        (as insightface does) but never below 1 pixel, so any aspect ratio can be resized."""
        image_ratio = height / width
        if image_ratio > input_height / input_width:  # height is the limiting side
            resized_height = input_height
            resized_width = min(input_width, max(1, int(resized_height / image_ratio)))
        else:
            resized_width = input_width
            resized_height = min(input_height, max(1, int(resized_width * image_ratio)))
        return cls(
            input_width,
            input_height,
            resized_width,
            resized_height,
            resized_width / width,
            resized_height / height,
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The (input_height, input_width, 3) uint8 detector input, black outside the image."""
        canvas = np.zeros((self.input_height, self.input_width, 3), dtype=np.uint8)
        size = (self.resized_width, self.resized_height)
        if (image.shape[1], image.shape[0]) == size:
            canvas[: self.resized_height, : self.resized_width] = image
        else:
            canvas[: self.resized_height, : self.resized_width] = cv2.resize(image, size)
        return canvas

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2k) interleaved x, y coordinates from input pixels back to image pixels."""
        scales = np.tile(
            np.array([self.scale_x, self.scale_y], dtype=np.float32), points.shape[-1] // 2
        )
        return points / scales


@dataclass(frozen=True)
class Detections:
    """Decoded faces in one coordinate frame: boxes (n, 4) x1 y1 x2 y2, landmarks (n, 5, 2),
    scores (n,), highest score first."""

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray


def anchor_centres(height: int, width: int, stride: int, anchors_per_cell: int) -> np.ndarray:
    """(height * width * anchors, 2) x, y centres of one level: each cell's top-left corner
    times the stride, repeated for each anchor of the cell (row-major, anchors innermost)."""
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centres, anchors_per_cell, axis=0)


class ScrfdDecoder:
    """Turns one image's raw SCRFD outputs into scored boxes and landmarks, then NMS."""

    def __init__(self, layout: ScrfdLayout, score_threshold: float) -> None:
        if not layout.has_keypoints:
            raise ValueError("the detector gives no landmarks; a 5-keypoint SCRFD is required")
        self.layout = layout
        self.score_threshold = score_threshold
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _centres_for(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:  # a handful of input sizes: bounded in practice
            self._centres[key] = anchor_centres(
                height // stride, width // stride, stride, self.layout.anchors_per_cell
            )
        return self._centres[key]

    def decode(self, outputs: list[np.ndarray], height: int, width: int) -> Detections:
        """Outputs of one image (batch axis already removed), for a (height, width) input."""
        levels = len(self.layout.strides)
        boxes, landmarks, scores = [], [], []
        for level, stride in enumerate(self.layout.strides):
            level_scores = outputs[level].reshape(-1)
            keep = np.flatnonzero(level_scores >= self.score_threshold)
            if keep.size == 0:
                continue
            centres = self._centres_for(height, width, stride)[keep]
            distances = outputs[level + levels].reshape(-1, 4)[keep] * stride
            offsets = outputs[level + 2 * levels].reshape(-1, 10)[keep] * stride
            boxes.append(
                np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
            )
            landmarks.append(centres[:, np.newaxis, :] + offsets.reshape(-1, 5, 2))
            scores.append(level_scores[keep])
        if not scores:
            return Detections(
                np.zeros((0, 4), np.float32),
                np.zeros((0, 5, 2), np.float32),
                np.zeros(0, np.float32),
            )
        all_scores = np.concatenate(scores).astype(np.float32)
        all_boxes = np.concatenate(boxes).astype(np.float32)
        all_landmarks = np.concatenate(landmarks).astype(np.float32)
        order = np.argsort(-all_scores, kind="stable")
        keep = non_maximum_suppression(all_boxes[order], NMS_IOU_THRESHOLD)
        chosen = order[keep]
        return Detections(all_boxes[chosen], all_landmarks[chosen], all_scores[chosen])


def non_maximum_suppression(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept, for boxes sorted by descending score. Areas count the
    +1 pixel of insightface's NMS, so both keep the same boxes."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.arange(boxes.shape[0])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = width * height
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou_threshold]
    return np.array(keep, dtype=np.int64)
