"""Tiny ONNX models with known behaviour, so tests exercise the real onnxruntime path in
milliseconds and without any downloaded weights.

- `make_detector` writes an SCRFD-shaped detector (nine outputs: scores, box distances and
  keypoint offsets for strides 8/16/32, two anchors per cell) whose outputs are constants that
  decode, exactly as insightface's `SCRFD.forward` decodes them, to the requested faces. The
  constants are laid out for one detector input size (`input_size` x `input_size`, 640 by
  default): feed it any other size and the number of rows no longer matches the anchor grid.
  Faces must not overlap much (IoU < 0.4), or non-maximum suppression keeps only one.
- `make_recognizer` writes a recognizer whose embedding is a fixed random projection of the
  4 x 4 per-channel average of the crop: deterministic, equal for equal crops, different for
  crops that differ at that scale.
- `make_decoy_model` writes models shaped like InsightFace's landmark and gender/age models,
  which a pack loader must not take for a recognizer.
- `make_pack_folder` / `make_manifest_pack` assemble them into pack folders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.packs import MANIFEST_NAME, DetectorSpec, PackManifest, RecognizerSpec, sha256_file

# Opset 13 has every operator used here (ReduceSum with optional axes input, ScatterND) and
# is supported by every onnxruntime release this project accepts; IR 8 keeps old runtimes happy.
OPSET = 13
IR_VERSION = 8

# SCRFD's feature-pyramid strides and anchors per cell for its 6/9-output variants
# (insightface python-package model_zoo/scrfd.py, `_init_vars`).
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS_PER_CELL = 2

# The five landmarks of the 112 x 112 ArcFace alignment template (insightface
# utils/face_align.py `arcface_dst`): left eye, right eye, nose, mouth left, mouth right.
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

# The recognizer averages each channel over a RECOGNIZER_GRID x RECOGNIZER_GRID grid.
RECOGNIZER_GRID = 4

DecoyKind = Literal["landmark_2d_106", "landmark_3d_68", "genderage"]

# Input side and output width of InsightFace's auxiliary models in buffalo_l / antelopev2:
# 2d106det.onnx (192 px, 106 x 2 points), 1k3d68.onnx (192 px, 3309 values), genderage.onnx
# (96 px, 2 gender logits + age).
DECOY_SHAPES: dict[DecoyKind, tuple[int, int]] = {
    "landmark_2d_106": (192, 212),
    "landmark_3d_68": (192, 3309),
    "genderage": (96, 3),
}


@dataclass(frozen=True)
class SyntheticFace:
    """A face the synthetic detector reports, in detector-input pixels.

    `box` is (x1, y1, x2, y2); `landmarks` are five (x, y) points in the order left eye,
    right eye, nose, mouth left, mouth right.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float = 0.9

    def __post_init__(self) -> None:
        if len(self.landmarks) != 5:
            raise ValueError(f"a face needs 5 landmarks, got {len(self.landmarks)}")
        if not 0.0 < self.score <= 1.0:
            raise ValueError(f"score must be in (0, 1], got {self.score}")

    @classmethod
    def from_box(cls, box: tuple[float, float, float, float], score: float = 0.9) -> SyntheticFace:
        """A face whose landmarks sit where the ArcFace template puts them inside `box`."""
        x1, y1, x2, y2 = box
        width, height = x2 - x1, y2 - y1
        landmarks = tuple(
            (x1 + tx / 112.0 * width, y1 + ty / 112.0 * height) for tx, ty in ARCFACE_TEMPLATE_112
        )
        return cls(box=box, landmarks=landmarks, score=score)

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _assign_anchor_slots(faces: Sequence[SyntheticFace], input_size: int) -> list[tuple[int, int]]:
    """Give each face one (level, row) in the outputs: the anchor of the cell holding the
    face's centre, at the finest stride whose slot is still free."""
    used: set[tuple[int, int]] = set()
    slots = []
    for face in faces:
        cx, cy = face.center
        for level, stride in enumerate(SCRFD_STRIDES):
            cells = input_size // stride
            col = min(max(int(cx // stride), 0), cells - 1)
            row = min(max(int(cy // stride), 0), cells - 1)
            free = [
                (row * cells + col) * SCRFD_ANCHORS_PER_CELL + anchor
                for anchor in range(SCRFD_ANCHORS_PER_CELL)
                if (level, (row * cells + col) * SCRFD_ANCHORS_PER_CELL + anchor) not in used
            ]
            if free:
                used.add((level, free[0]))
                slots.append((level, free[0]))
                break
        else:
            raise ValueError(f"too many faces centred near {face.center} for the anchor grid")
    return slots


def _anchor_center(level: int, index: int, input_size: int) -> tuple[float, float]:
    """Anchor centre as SCRFD computes it: the cell's top-left corner times the stride."""
    stride = SCRFD_STRIDES[level]
    cells = input_size // stride
    cell = index // SCRFD_ANCHORS_PER_CELL
    return float((cell % cells) * stride), float((cell // cells) * stride)


def make_detector(
    path: Path,
    faces: Sequence[SyntheticFace],
    input_size: int = 640,
    *,
    with_keypoints: bool = True,
) -> Path:
    """Write an SCRFD-shaped detector that reports `faces` for a `input_size` square input.

    Outputs, in SCRFD order: scores for strides 8/16/32 ([N, 1] each), box distances
    ([N, 4]), then keypoint offsets ([N, 10]; left out when `with_keypoints` is False, which
    gives the 6-output variant). N = (input_size / stride)^2 * 2.
    """
    if input_size % max(SCRFD_STRIDES):
        raise ValueError(f"input_size must be a multiple of {max(SCRFD_STRIDES)}")
    rows = [(input_size // s) ** 2 * SCRFD_ANCHORS_PER_CELL for s in SCRFD_STRIDES]
    widths = {"score": 1, "bbox": 4, "kps": 10}
    values = {
        (kind, level): np.zeros((rows[level], width), np.float32)
        for kind, width in widths.items()
        for level in range(len(SCRFD_STRIDES))
    }
    written: dict[tuple[str, int], list[int]] = {key: [] for key in values}
    for face, (level, index) in zip(faces, _assign_anchor_slots(faces, input_size), strict=True):
        stride = SCRFD_STRIDES[level]
        ax, ay = _anchor_center(level, index, input_size)
        x1, y1, x2, y2 = face.box
        values["score", level][index] = face.score
        values["bbox", level][index] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / stride
        values["kps", level][index] = (
            np.array([(px - ax, py - ay) for px, py in face.landmarks]).reshape(-1) / stride
        )
        for kind in widths:
            written[kind, level].append(index)

    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    nodes = [
        # The outputs are constants, but the graph still reads its input (times zero) so
        # that onnxruntime accepts and "uses" the image like a real detector does.
        helper.make_node("ReduceSum", ["input.1"], ["pixel_sum"], name="consume", keepdims=0),
        helper.make_node("Mul", ["pixel_sum", "zero"], ["nothing"], name="zero_out"),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outputs = []
    kinds = ["score", "bbox", "kps"] if with_keypoints else ["score", "bbox"]
    for kind in kinds:
        for level, stride in enumerate(SCRFD_STRIDES):
            name = f"{kind}_{stride}"
            table = values[kind, level]
            blank = numpy_helper.from_array(np.zeros(1, np.float32), "value")
            initializers.append(
                numpy_helper.from_array(np.array(table.shape, np.int64), f"{name}_shape")
            )
            nodes.append(
                helper.make_node(
                    "ConstantOfShape", [f"{name}_shape"], [f"{name}_zeros"], value=blank
                )
            )
            source = f"{name}_zeros"
            indices = written[kind, level]
            if indices:
                initializers += [
                    numpy_helper.from_array(np.array(indices, np.int64)[:, None], f"{name}_idx"),
                    numpy_helper.from_array(table[indices], f"{name}_rows"),
                ]
                nodes.append(
                    helper.make_node(
                        "ScatterND",
                        [source, f"{name}_idx", f"{name}_rows"],
                        [f"{name}_table"],
                    )
                )
                source = f"{name}_table"
            nodes.append(helper.make_node("Add", [source, "nothing"], [name]))
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, list(table.shape))
            )
    graph = helper.make_graph(nodes, "synthetic_scrfd", [image], outputs, initializers)
    return _save(_model(graph), path)


def recognizer_projection(embedding_size: int, seed: int = 0) -> np.ndarray:
    """The fixed (48, d) matrix the synthetic recognizer multiplies pooled pixels by."""
    rng = np.random.default_rng(seed)
    features = 3 * RECOGNIZER_GRID * RECOGNIZER_GRID
    return rng.standard_normal((features, embedding_size)).astype(np.float32)


def make_recognizer(
    path: Path,
    embedding_size: int = 8,
    input_size: int = 112,
    dynamic_batch: bool = True,
    *,
    seed: int = 0,
    normalisation_in_graph: bool = False,
) -> Path:
    """Write a recognizer: input `input` [batch, 3, S, S] -> output `embedding` [batch, d].

    embedding = flatten(average_pool(crop, S/4)) @ recognizer_projection(d, seed); not
    L2-normalised. Feed it normalised crops, as the pipeline does: on raw 0-255 pixels the
    common brightness dominates and unrelated crops point the same way.

    With `normalisation_in_graph`, the graph starts with nodes named `Sub_0`/`Mul_1` computing
    (x - 127.5) / 127.5, like MXNet-converted ArcFace models, which insightface's rule reads as
    "feed raw pixels" (mean 0, std 1).
    """
    if input_size % RECOGNIZER_GRID:
        raise ValueError(f"input_size must be a multiple of {RECOGNIZER_GRID}")
    batch: int | str = "batch" if dynamic_batch else 1
    crop = helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [batch, 3, input_size, input_size]
    )
    embedding = helper.make_tensor_value_info(
        "embedding", TensorProto.FLOAT, [batch, embedding_size]
    )
    block = input_size // RECOGNIZER_GRID
    initializers = [
        numpy_helper.from_array(recognizer_projection(embedding_size, seed), "projection")
    ]
    nodes = []
    source = "input"
    if normalisation_in_graph:
        initializers += [
            numpy_helper.from_array(np.array(127.5, np.float32), "pixel_mean"),
            numpy_helper.from_array(np.array(1.0 / 127.5, np.float32), "pixel_scale"),
        ]
        nodes += [
            helper.make_node("Sub", ["input", "pixel_mean"], ["centred"], name="Sub_0"),
            helper.make_node("Mul", ["centred", "pixel_scale"], ["scaled"], name="Mul_1"),
        ]
        source = "scaled"
    nodes += [
        helper.make_node(
            "AveragePool",
            [source],
            ["pooled"],
            name="pool",
            kernel_shape=[block, block],
            strides=[block, block],
        ),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node("MatMul", ["features", "projection"], ["embedding"], name="project"),
    ]
    graph = helper.make_graph(nodes, "synthetic_recognizer", [crop], [embedding], initializers)
    return _save(_model(graph), path)


def make_decoy_model(path: Path, kind: DecoyKind) -> Path:
    """Write a model shaped like an InsightFace landmark or gender/age model: one square
    image input and one [1, k] output (k = 212, 3309 or 3)."""
    side, width = DECOY_SHAPES[kind]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, side, side])
    output = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])
    weights = np.random.default_rng(1).standard_normal((3, width)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node("MatMul", ["features", "weights"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, kind, [image], [output], [numpy_helper.from_array(weights, "weights")]
    )
    return _save(_model(graph), path)


DETECTOR_FILE = "scrfd_synthetic.onnx"
RECOGNIZER_FILE = "arcface_synthetic.onnx"
DECOY_FILES: dict[str, DecoyKind] = {
    "1k3d68.onnx": "landmark_3d_68",
    "2d106det.onnx": "landmark_2d_106",
    "genderage.onnx": "genderage",
}


def make_pack_folder(
    directory: Path,
    faces: Sequence[SyntheticFace] = (),
    embedding_size: int = 8,
    *,
    with_decoys: bool = False,
    input_size: int = 640,
) -> Path:
    """Write an InsightFace-style pack (ONNX files only, no manifest) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    make_detector(directory / DETECTOR_FILE, faces, input_size)
    make_recognizer(directory / RECOGNIZER_FILE, embedding_size)
    if with_decoys:
        for file_name, kind in DECOY_FILES.items():
            make_decoy_model(directory / file_name, kind)
    return directory


def make_manifest_pack(
    directory: Path,
    faces: Sequence[SyntheticFace] = (),
    embedding_size: int = 8,
    *,
    name: str = "synthetic",
    threshold: float = 0.5,
    with_checksums: bool = True,
    manifest_embedding_size: int | None = None,
    input_size: int = 640,
) -> Path:
    """Write a pack with a `pack.json` manifest. `manifest_embedding_size` lets a test make
    the manifest disagree with the model."""
    directory.mkdir(parents=True, exist_ok=True)
    detector = make_detector(directory / DETECTOR_FILE, faces, input_size)
    recognizer = make_recognizer(directory / RECOGNIZER_FILE, embedding_size)
    manifest = PackManifest(
        name=name,
        detector=DetectorSpec(
            file=detector.name,
            sha256=sha256_file(detector) if with_checksums else None,
            input_size=input_size,
        ),
        recognizer=RecognizerSpec(
            file=recognizer.name,
            sha256=sha256_file(recognizer) if with_checksums else None,
            embedding_size=manifest_embedding_size or embedding_size,
        ),
        threshold=threshold,
        source="synthetic test models",
    )
    (directory / MANIFEST_NAME).write_text(
        json.dumps(manifest.model_dump(mode="json"), indent=2), encoding="utf-8"
    )
    return directory
