"""Give an SCRFD detector a dynamic batch axis, and prove it answers as the batch-1 model does.

InsightFace's SCRFD files fix the batch at 1: each of the nine outputs is a Transpose of
(N, C, H, W) to (H, W, N, C) followed by a Reshape to [-1, k], which folds the batch into the
anchor axis. Transposing to (N, H, W, C) instead and reshaping to [0, -1, k] (0 copies the
batch dimension) gives the same rows for one image and keeps the batch as a leading axis,
[B, anchors, k], so several images go through one model call: that pays on
a GPU, where one 640x640 image leaves most of the device idle. `FaceDetector` reads such a
model's 3-D outputs and batches images when it can.

`check_batch_parity` runs both models on real photos, one at a time through the original and
in one batch through the rewrite, and returns the largest difference of any output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from service.faces.detector import DetectorOptions, FaceDetector
from service.faces.images import decode_image
from service.packs import DetectorSpec

BATCH_DIM = "batch"
# Largest output difference accepted between the batch-1 model and the batched one: both run
# the same kernels, so differences are float rounding (measured: 0 to 1e-5 on det_500m).
PARITY_TOLERANCE = 1e-4


def add_batch_axis(source: Path, target: Path) -> int:
    """Write `source` with a dynamic batch axis to `target`; returns the Reshapes rewritten.

    Raises ValueError when the graph is not the SCRFD layout described above.
    """
    model = onnx.load(str(source))
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {init.name: init for init in graph.initializer}
    output_names = {output.name for output in graph.output}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or not _feeds_an_output(node, producers, output_names, graph):
            continue
        shape_name = node.input[1]
        if shape_name not in initializers:
            raise ValueError(f"{source}: Reshape {node.name} takes a computed shape")
        shape = numpy_helper.to_array(initializers[shape_name])
        if shape.tolist()[:1] != [-1] or shape.size != 2:
            raise ValueError(f"{source}: Reshape {node.name} targets {shape.tolist()}, not [-1, k]")
        batched_name = f"{shape_name}_batched"
        if batched_name not in initializers:
            batched = numpy_helper.from_array(
                np.array([0, -1, int(shape[1])], dtype=np.int64), batched_name
            )
            graph.initializer.append(batched)
            initializers[batched_name] = batched
        node.input[1] = batched_name
        transpose = producers.get(node.input[0])
        if transpose is not None and transpose.op_type == "Transpose":
            perm = next(a for a in transpose.attribute if a.name == "perm")
            if list(perm.ints) == [2, 3, 0, 1]:  # (H, W, N, C) -> (N, H, W, C)
                perm.ClearField("ints")
                perm.ints.extend([0, 2, 3, 1])
            elif list(perm.ints) != [0, 2, 3, 1]:
                raise ValueError(f"{source}: {transpose.name} permutes {list(perm.ints)}")
        rewritten += 1
    if rewritten != len(graph.output):
        raise ValueError(
            f"{source}: {rewritten} of {len(graph.output)} outputs come from a [-1, k] Reshape; "
            "this is not an SCRFD detector with a folded batch"
        )
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    del graph.value_info[:]  # intermediate shapes inferred for batch 1 no longer hold
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    for output in graph.output:
        last = output.type.tensor_type.shape.dim[-1].dim_value
        output.type.tensor_type.shape.ClearField("dim")
        for dim in (BATCH_DIM, "anchors"):
            output.type.tensor_type.shape.dim.add().dim_param = dim
        output.type.tensor_type.shape.dim.add().dim_value = last
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return rewritten


def _feeds_an_output(node, producers, output_names, graph) -> bool:
    """The Reshape's output is a graph output, directly or through one elementwise node
    (SCRFD applies Sigmoid to the scores after the Reshape)."""
    if node.output[0] in output_names:
        return True
    consumers = [n for n in graph.node if node.output[0] in n.input]
    return len(consumers) == 1 and consumers[0].output[0] in output_names


def check_batch_parity(
    original: Path, batched: Path, photos: Sequence[Path], batch_size: int = 4
) -> float:
    """Largest absolute difference of any output between the two models over `photos`;
    raises ValueError above `PARITY_TOLERANCE` or when the detected faces differ."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    spec = DetectorSpec(file=original.name)
    single = ort.InferenceSession(str(original), options)
    several = ort.InferenceSession(str(batched), options)
    detectors = [FaceDetector(session, spec, DetectorOptions()) for session in (single, several)]
    if not detectors[1].batches_images:
        raise ValueError(f"{batched} does not take a batch of images")
    images = [decode_image(path.read_bytes()) for path in photos]
    worst = 0.0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        blob = detectors[1].input_blob(chunk)
        together = several.run(None, {several.get_inputs()[0].name: blob})
        for index in range(len(chunk)):
            alone = single.run(None, {single.get_inputs()[0].name: blob[index : index + 1]})
            for one, many in zip(alone, together, strict=True):
                worst = max(worst, float(np.abs(one - many[index]).max()))
        faces_alone = [detectors[0].detect(image) for image in chunk]
        faces_together = detectors[1].detect_many(chunk)
        for path, a, b in zip(photos[start:], faces_alone, faces_together, strict=False):
            if len(a) != len(b) or any(
                np.abs(x.landmarks - y.landmarks).max() > 1e-2 for x, y in zip(a, b, strict=True)
            ):
                raise ValueError(f"{path}: batched detection differs from the batch-1 model")
    if worst > PARITY_TOLERANCE:
        raise ValueError(f"batched outputs differ by up to {worst:.2e} (> {PARITY_TOLERANCE})")
    return worst
