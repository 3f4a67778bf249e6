"""ONNX signatures: tell a detector from a recognizer (and from the other models InsightFace
folders hold) by graph inputs and outputs, read without loading weights into a runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from service.errors import PackError

# --- InsightFace conventions, for packs without a manifest ------------------------------------
# insightface python-package model_zoo/scrfd.py: input_mean 127.5, input_std 128.0, RGB
# (blobFromImage swapRB=True); FaceAnalysis prepares the detector at det_size 640 x 640.
SCRFD_INPUT_SIZE = 640
SCRFD_MEAN = 127.5
SCRFD_STD = 128.0
# model_zoo/arcface_onnx.py: RGB, (x - 127.5) / 127.5 unless the graph normalises itself.
ARCFACE_MEAN = 127.5
ARCFACE_STD = 127.5
# arcface_onnx.py looks at the first 8 graph nodes for Sub/Mul normalisation nodes.
NORMALISATION_NODE_WINDOW = 8
# SCRFD exports have 6 (no keypoints) or 9 (keypoints) outputs with 3 strides, 10 or 15 with 5.
SCRFD_OUTPUTS_WITH_KEYPOINTS = (9, 15)
# model_zoo.py ModelRouter: >= 5 outputs is a detector (SCRFD).
MIN_DETECTOR_OUTPUTS = 5
# A face detector's input is dynamic or at least this many pixels per side (SCRFD runs at
# 128-1280; smaller fixed inputs are classifiers).
MIN_DETECTOR_SIDE = 128
# ModelRouter: 192 px square input = landmark model (2d106det, 1k3d68); 96 px = attribute
# model (genderage); 2 inputs at 128 px = face swapper (inswapper_128).
LANDMARK_INPUT_SIDE = 192
ATTRIBUTE_INPUT_SIDE = 96
SWAPPER_INPUT_SIDE = 128
# ModelRouter: a recognizer's square input is >= 112 px and a multiple of 16.
MIN_RECOGNIZER_SIDE = 112
RECOGNIZER_SIDE_MULTIPLE = 16

ModelRole = Literal["detector", "recognizer", "landmark", "attribute", "swapper", "unknown"]
Dim = int | str | None  # fixed size, symbolic name, or unknown


@dataclass(frozen=True)
class TensorSignature:
    """A graph input or output: name and shape (int = fixed, str = symbolic, None = unknown)."""

    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class OnnxSignature:
    """What a model looks like from outside, read without loading it into a runtime."""

    path: Path
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    leading_node_names: tuple[str, ...]

    def describe(self) -> str:
        """One-line summary, e.g. `1 input [1, 3, ?, ?] -> 9 outputs`."""
        shapes = ", ".join(format_shape(item.shape) for item in self.inputs)
        outputs = ", ".join(format_shape(item.shape) for item in self.outputs[:3])
        more = ", ..." if len(self.outputs) > 3 else ""
        return (
            f"{len(self.inputs)} input(s) {shapes} -> {len(self.outputs)} output(s) {outputs}{more}"
        )


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _tensor_signature(value: onnx.ValueInfoProto) -> TensorSignature:
    dims: list[Dim] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return TensorSignature(value.name, tuple(dims))


def read_onnx_signature(path: Path) -> OnnxSignature:
    """Parse `path` as ONNX (external weights are not read) and return its signature.

    Raises `PackError` when the file is not a usable ONNX model (truncated download, wrong
    file, missing external weights).
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise PackError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}): the file is truncated "
            "or corrupt, download or export it again"
        ) from exc
    graph = model.graph
    weights = {initializer.name for initializer in graph.initializer}
    inputs = tuple(_tensor_signature(v) for v in graph.input if v.name not in weights)
    outputs = tuple(_tensor_signature(v) for v in graph.output)
    if not inputs or not outputs:
        raise PackError(
            f"{path} parses as ONNX but has no graph inputs or outputs: it is truncated or not a "
            "model, download or export it again"
        )
    for initializer in graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            location = next(
                (entry.value for entry in initializer.external_data if entry.key == "location"), ""
            )
            if not (path.parent / location).is_file():
                raise PackError(
                    f"{path} keeps its weights in {location!r}, which is not next to it: copy "
                    "that file into the pack folder too"
                )
    names = tuple(node.name for node in graph.node[:NORMALISATION_NODE_WINDOW])
    return OnnxSignature(path, inputs, outputs, names)


def image_input(signature: OnnxSignature) -> TensorSignature | None:
    """The first input if it is a 4-D NCHW image tensor."""
    first = signature.inputs[0]
    return first if len(first.shape) == 4 else None


def square_input_side(signature: OnnxSignature) -> int | None:
    """Side of a fixed square NCHW input, else None."""
    image = image_input(signature)
    if image is None:
        return None
    height, width = image.shape[2], image.shape[3]
    return height if isinstance(height, int) and height == width else None


def is_detector(signature: OnnxSignature) -> bool:
    """SCRFD-like: at least 5 outputs and one image input whose spatial dims are dynamic or
    large enough to hold a scene (insightface's ModelRouter uses the output count alone)."""
    image = image_input(signature)
    if len(signature.outputs) < MIN_DETECTOR_OUTPUTS or image is None:
        return False
    return all(not isinstance(dim, int) or dim >= MIN_DETECTOR_SIDE for dim in image.shape[2:])


def detector_has_keypoints(signature: OnnxSignature) -> bool:
    """SCRFD with 5-point landmarks (9 outputs for 3 strides, 15 for 5)."""
    return len(signature.outputs) in SCRFD_OUTPUTS_WITH_KEYPOINTS


def is_recognizer(signature: OnnxSignature) -> bool:
    """One image input, square, >= 112 px and a multiple of 16, and one 2-D output
    [batch, d] (insightface's ArcFaceONNX rule), excluding the 192 px landmark models."""
    side = square_input_side(signature)
    if len(signature.inputs) != 1 or len(signature.outputs) != 1 or side is None:
        return False
    if len(signature.outputs[0].shape) != 2 or side == LANDMARK_INPUT_SIDE:
        return False
    return side >= MIN_RECOGNIZER_SIDE and side % RECOGNIZER_SIDE_MULTIPLE == 0


def classify_model(signature: OnnxSignature) -> ModelRole:
    """What a model in an InsightFace folder is, in insightface ModelRouter's order."""
    if is_detector(signature):
        return "detector"
    side = square_input_side(signature)
    if side == LANDMARK_INPUT_SIDE:
        return "landmark"
    if side == ATTRIBUTE_INPUT_SIDE:
        return "attribute"
    if len(signature.inputs) == 2 and side == SWAPPER_INPUT_SIDE:
        return "swapper"
    if is_recognizer(signature):
        return "recognizer"
    return "unknown"


def arcface_input_normalisation(signature: OnnxSignature) -> tuple[float, float]:
    """(mean, std) to feed a recognizer, by insightface's arcface_onnx.py rule.

    MXNet-converted ArcFace models normalise inside the graph: among their first 8 nodes are
    ones named `Sub*`/`_minus*` and `Mul*`/`_mul*`, and they take raw pixels (mean 0, std 1).
    Any other model takes (x - 127.5) / 127.5.
    """
    names = signature.leading_node_names[:NORMALISATION_NODE_WINDOW]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if has_sub and has_mul else (ARCFACE_MEAN, ARCFACE_STD)


def recognizer_embedding_size(signature: OnnxSignature) -> int:
    """d of the [batch, d] output: from the graph when fixed, else by running one blank crop
    (some exporters leave d symbolic, e.g. a Reshape to [batch, -1])."""
    dim = signature.outputs[0].shape[1]
    if isinstance(dim, int):
        return dim
    return _probe_embedding_size(signature)


def _probe_embedding_size(signature: OnnxSignature) -> int:
    import onnxruntime  # imported here: only models with a symbolic output size need it

    side = square_input_side(signature)
    try:
        session = onnxruntime.InferenceSession(
            str(signature.path), providers=["CPUExecutionProvider"]
        )
        crop = np.zeros((1, 3, side, side), np.float32)
        (embedding,) = session.run(None, {signature.inputs[0].name: crop})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PackError(
            f"{signature.path} failed to run on a blank {side}x{side} crop "
            f"({type(exc).__name__}): the model is broken or not a face recognizer"
        ) from exc
    return int(np.asarray(embedding).shape[-1])


# --- loading -----------------------------------------------------------------------------------
