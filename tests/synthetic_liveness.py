"""A tiny liveness classifier with known behaviour, and a helper that adds it to a pack.

`make_liveness_model` writes a graph shaped like the MiniFASNet exports (input `input`
[batch, 3, S, S] raw BGR 0-255, output `logits` [batch, 3]) whose logits are
`[0, (mean(crop) - 127.5) / LIVENESS_SLOPE, 0]`: a bright crop is judged live, a dark one an
attack, so a test chooses the verdict by the photo's brightness around the face.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from synthetic_models import _model, _save

from service.packs import MANIFEST_NAME, LivenessModelSpec, LivenessSpec, sha256_file

# Logit units per grey level away from mid-grey: mean 200 gives p(live) ≈ 0.9998, 50 ≈ 0.
LIVENESS_SLOPE = 8.0
LIVENESS_SCALES = (2.7, 4.0)


def live_probability(mean_pixel: float) -> float:
    """The synthetic model's softmax live score for a crop of this mean value."""
    logit = (mean_pixel - 127.5) / LIVENESS_SLOPE
    return float(np.exp(logit) / (np.exp(logit) + 2.0))


def make_liveness_model(path: Path, input_size: int = 80, num_classes: int = 3) -> Path:
    """Write the synthetic classifier described in the module docstring."""
    crop = helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", 3, input_size, input_size]
    )
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])
    one_hot = np.zeros((1, num_classes), np.float32)
    one_hot[0, 1] = 1.0 / LIVENESS_SLOPE
    initializers = [
        numpy_helper.from_array(np.array([[127.5]], np.float32), "mid_grey"),
        numpy_helper.from_array(one_hot, "live_row"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["mean_2d"], axis=1),
        helper.make_node("Sub", ["mean_2d", "mid_grey"], ["centred"]),
        helper.make_node("Mul", ["centred", "live_row"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "synthetic_liveness", [crop], [logits], initializers)
    return _save(_model(graph), path)


def add_liveness_models(
    pack_dir: Path,
    *,
    threshold: float = 0.5,
    scales: tuple[float, ...] = LIVENESS_SCALES,
    input_size: int = 80,
) -> Path:
    """Write one synthetic liveness model per scale into the pack and record them in its
    `pack.json` (the pack must have one)."""
    manifest_path = pack_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    models = []
    for index, scale in enumerate(scales):
        path = make_liveness_model(pack_dir / f"liveness_{index}.onnx", input_size)
        models.append(
            LivenessModelSpec(
                file=path.name,
                sha256=sha256_file(path),
                variant="synthetic",
                scale=scale,
                input_size=input_size,
            )
        )
    spec = LivenessSpec(models=models, threshold=threshold, source="synthetic test models")
    manifest["liveness"] = spec.model_dump(mode="json")
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return pack_dir
