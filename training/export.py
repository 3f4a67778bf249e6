"""From a trained backbone to a model pack the service serves.

1. ONNX export with a dynamic batch axis (torch's dynamo exporter, weights inside the one
   file). The graph holds no normalisation: the pack manifest says RGB, (x − 127.5)/127.5,
   which is also what insightface's `ArcFaceONNX` applies to graphs that do not start with
   Sub/Mul nodes, so the file works there unchanged.
2. Parity: onnxruntime and PyTorch must agree within 1e-3 on random batches of several sizes;
   the largest difference is printed, and a larger one stops the export.
3. The pack folder: recognizer ONNX + a detector ONNX (copied; a pack needs one) +
   `pack.json` (`service.packs.PackManifest`) recording pre-processing, embedding size, head
   and margins, training data, evaluation results and the recommended threshold: the
   threshold at the target FAR measured on the evaluation sets given, else
   `service.packs.DEFAULT_THRESHOLD`.

The service embeds without flip-test unless told otherwise (FACEVERIFY_FLIP), so `threshold`
is always measured without flip-test, whatever `--flip` says; the threshold measured with
flip-test is recorded beside it (`training.threshold_with_flip_test`) for services run with
FACEVERIFY_FLIP=true. `--flip` chooses which evaluation is printed and recorded.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.packs import (
    DEFAULT_THRESHOLD,
    MANIFEST_NAME,
    DetectorSpec,
    PackManifest,
    RecognizerSpec,
    sha256_file,
)
from training.checkpoint import load_backbone
from training.evaluate import (
    DEFAULT_TARGET_FAR,
    OnnxEmbedder,
    VerificationResult,
    evaluate_set_with_and_without_flip,
    load_verification_set,
    pooled_threshold,
)

# Largest |ONNX − PyTorch| accepted on raw embeddings (values of order 1-10): float32
# re-ordering gives ~1e-5; anything near 1e-3 is a wrong operator, not rounding.
PARITY_TOLERANCE = 1e-3
PARITY_BATCH_SIZES = (1, 3, 8)
# Opset of the exported graph: 18 is supported by onnxruntime >= 1.14 (this project needs >= 1.20).
ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
RECOGNIZER_FILE = "recognizer.onnx"
# The recognizer's pre-processing, as the training data pipeline applies it: RGB,
# (x/255 − 0.5)/0.5 = (x − 127.5)/127.5.
COLOR_ORDER = "RGB"
INPUT_MEAN = 127.5
INPUT_STD = 127.5


class ParityError(RuntimeError):
    """The exported ONNX graph does not compute what the PyTorch model computes."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs optional-dependency warnings (torchvision ops) at WARNING and
    raises FutureWarnings about its own internals; neither concerns the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def write_onnx(
    model: nn.Module, path: Path, example: torch.Tensor, input_name: str, output_name: str
) -> Path:
    """Write `model` (in eval mode, on CPU) as ONNX with a dynamic batch axis, weights inside
    the file. `example` must have a batch of 2: a batch of 1 would be specialised."""
    model = model.eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=ONNX_OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    return path


def export_onnx(backbone: nn.Module, path: Path, input_size: int = 112) -> Path:
    """Write `backbone` as ONNX: input `input` [batch, 3, S, S] float32 RGB normalised to
    [-1, 1], output `embedding` [batch, d] un-normalised."""
    example = torch.randn(2, 3, input_size, input_size)
    return write_onnx(backbone, path, example, INPUT_NAME, OUTPUT_NAME)


def check_parity(
    backbone: nn.Module,
    onnx_path: Path,
    input_size: int = 112,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Largest |ONNX − PyTorch| over random batches; raises `ParityError` above `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    backbone = backbone.eval().cpu()
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batch_sizes:
        images = torch.rand(batch, 3, input_size, input_size, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = backbone(images).numpy()
        actual = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        if actual.shape != expected.shape:
            raise ParityError(
                f"ONNX output {actual.shape} for batch {batch}, PyTorch {expected.shape}"
            )
        worst = max(worst, float(np.abs(actual - expected).max()))
    if not worst <= tolerance:
        raise ParityError(
            f"ONNX and PyTorch embeddings differ by up to {worst:.3g} (> {tolerance:g}): the "
            "export is wrong; check for operators the exporter changed (see the warnings above)"
        )
    return worst


def write_pack(
    pack_dir: Path,
    recognizer_onnx: Path,
    detector_onnx: Path,
    *,
    name: str,
    embedding_size: int,
    threshold: float,
    input_size: int = 112,
    source: str = "",
    licence: str = "",
    training: dict[str, Any] | None = None,
) -> PackManifest:
    """Assemble a pack folder: copy both models in (unless already there) and write
    `pack.json` with their sha256."""
    pack_dir = Path(pack_dir)
    pack_dir.mkdir(parents=True, exist_ok=True)
    detector_onnx, recognizer_onnx = Path(detector_onnx), Path(recognizer_onnx)
    if not detector_onnx.is_file():
        raise FileNotFoundError(
            f"detector {detector_onnx} not found: pass --detector with an SCRFD ONNX that has "
            "keypoints (e.g. buffalo_l/det_10g.onnx)"
        )
    for model in (detector_onnx, recognizer_onnx):
        if model.resolve() != (pack_dir / model.name).resolve():
            shutil.copyfile(model, pack_dir / model.name)
    manifest = PackManifest(
        name=name,
        detector=DetectorSpec(
            file=detector_onnx.name, sha256=sha256_file(pack_dir / detector_onnx.name)
        ),
        recognizer=RecognizerSpec(
            file=recognizer_onnx.name,
            sha256=sha256_file(pack_dir / recognizer_onnx.name),
            input_size=input_size,
            color_order=COLOR_ORDER,
            mean=INPUT_MEAN,
            std=INPUT_STD,
            embedding_size=embedding_size,
        ),
        threshold=threshold,
        source=source,
        licence=licence,
        training=training,
    )
    (pack_dir / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def choose_threshold(
    given: float | None, results: Sequence[VerificationResult], target_far: float
) -> tuple[float, str]:
    """The pack's recommended threshold and how it was obtained: `given` if set; else the
    threshold at `target_far` over the pairs of all `results`; else the service's default."""
    if given is not None:
        return given, "given on the command line"
    measured = pooled_threshold(results, target_far)
    if measured is not None:
        names = ", ".join(result.name for result in results)
        return measured, f"threshold at FAR {target_far:g} on {names}"
    reason = "no evaluation set" if not results else "too few mismatched pairs for the target FAR"
    return DEFAULT_THRESHOLD, f"service default ({reason})"


@dataclass
class ExportResult:
    """What `export_pack` produced."""

    pack_dir: Path
    manifest: PackManifest
    max_abs_diff: float
    evaluation: list[VerificationResult]


def export_pack(
    checkpoint: Path,
    pack_dir: Path,
    detector: Path,
    *,
    name: str | None = None,
    eval_sets: Sequence[str] = (),
    target_far: float = DEFAULT_TARGET_FAR,
    flip: bool = False,
    threshold: float | None = None,
    licence: str = "",
    protocol: str = "auto",
) -> ExportResult:
    """Checkpoint → ONNX (parity-checked) → evaluated → pack folder with `pack.json`.

    The threshold is, in order: `threshold` if given; the threshold at `target_far` over the
    pairs of all `eval_sets` (evaluated on the exported ONNX without flip-test, i.e. as the
    service runs it by default); `service.packs.DEFAULT_THRESHOLD` when no set is given or
    the sets hold too few mismatched pairs for that FAR. The same with flip-test is recorded
    as `training.threshold_with_flip_test`; `flip` chooses the evaluation reported.
    """
    pack_dir = Path(pack_dir)
    if not Path(detector).is_file():
        raise FileNotFoundError(
            f"detector {detector} not found: pass --detector with an SCRFD ONNX that has "
            "keypoints (e.g. buffalo_l/det_10g.onnx)"
        )
    backbone, metadata = load_backbone(checkpoint)
    input_size = int(getattr(backbone, "input_size", 112))
    recognizer = export_onnx(backbone, pack_dir / RECOGNIZER_FILE, input_size)
    max_abs_diff = check_parity(backbone, recognizer, input_size)
    print(f"ONNX parity: max |onnxruntime − PyTorch| = {max_abs_diff:.3g}", end=" ")
    print(f"(limit {PARITY_TOLERANCE:g})")

    embedder = OnnxEmbedder(recognizer, COLOR_ORDER, INPUT_MEAN, INPUT_STD)
    both = [
        evaluate_set_with_and_without_flip(
            embedder, load_verification_set(spec, input_size), target_far, protocol
        )
        for spec in eval_sets
    ]
    plain, flipped = [b[False] for b in both], [b[True] for b in both]
    results = flipped if flip else plain
    for result in results:
        print(result.summary())
    chosen, how = choose_threshold(threshold, plain, target_far)
    chosen_flip, how_flip = choose_threshold(threshold, flipped, target_far)
    print(f"threshold {chosen:.4f} (without flip-test, the service's default): {how}")
    print(f"threshold {chosen_flip:.4f} with flip-test (FACEVERIFY_FLIP=true): {how_flip}")
    config = metadata.get("config", {})
    training = {
        "backbone": metadata["backbone"],
        "backbone_kwargs": metadata["backbone_kwargs"],
        "embedding_size": metadata["embedding_size"],
        **{"head": metadata.get("head", {}).get("head"), "margins": metadata.get("head", {})},
        "data": metadata.get("data"),
        "steps": metadata.get("step"),
        "config": config.get("name"),
        "evaluation": [r.to_dict() for r in results],
        "flip_test": flip,  # of `evaluation`
        "target_far": target_far,
        "threshold_flip_test": False,  # `threshold` was measured without flip-test
        "threshold_source": how,
        "threshold_with_flip_test": float(chosen_flip),
        "threshold_with_flip_test_source": how_flip,
        "onnx_max_abs_diff": max_abs_diff,
    }
    manifest = write_pack(
        pack_dir,
        recognizer,
        detector,
        name=name or pack_dir.name,
        embedding_size=int(metadata["embedding_size"]),
        threshold=float(chosen),
        input_size=input_size,
        source=f"faceverify training run {config.get('name', '')} (step {metadata.get('step')})",
        licence=licence,
        training=training,
    )
    return ExportResult(pack_dir, manifest, max_abs_diff, results)
