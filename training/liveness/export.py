"""From the published MiniFASNet checkpoints to liveness models inside a model pack.

1. Each checkpoint (`<scale>_<H>x<W>_<variant>.pth`) is loaded strictly into
   `training.liveness.minifasnet` and exported to ONNX with a dynamic batch axis (the
   service scores every face of a request, with both models, in one call each).
2. Parity: the softmax of onnxruntime and PyTorch must agree within `PARITY_TOLERANCE` on
   random 0-255 batches of several sizes and, when given, on real face crops.
3. The pack: the ONNX files are written into the pack folder and `pack.json` gains a
   `liveness` entry (sha256, crop scale, input size, colour order and range, class meaning,
   threshold, source and licence). An InsightFace folder without `pack.json` gets one written
   from the manifest the service synthesises for it, so it keeps loading the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from service.packs import (
    MANIFEST_NAME,
    LivenessModelSpec,
    LivenessSpec,
    PackManifest,
    load_pack,
    sha256_file,
)
from training.export import ParityError, write_onnx
from training.liveness.minifasnet import LIVE_CLASS, NUM_CLASSES, MiniFASNet, load_minifasnet

# Largest |softmax(ONNX) − softmax(PyTorch)| accepted: probabilities in [0, 1], float32
# re-ordering gives ~1e-6; anything near 1e-4 is a changed operator, not rounding.
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 3, 8)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The decision rule of the source (argmax of the averaged softmax is the live class) accepts
# every face whose averaged live probability exceeds one half; 0.5 is that rule's threshold
# on the live score alone. It is not tuned on any data of ours: see docs/liveness.md.
DEFAULT_LIVENESS_THRESHOLD = 0.5
SOURCE = "https://github.com/minivision-ai/Silent-Face-Anti-Spoofing (resources/anti_spoof_models)"
LICENCE = "Apache-2.0"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def centre_crops(folder: Path, size: int = 80, limit: int = 16) -> np.ndarray:
    """Square centre crops of up to `limit` photos under `folder`, resized to `size`: real
    image statistics for the parity check ((n, size, size, 3) uint8 BGR)."""
    photos = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    crops = []
    for photo in photos:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image is None:
            continue
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crops.append(cv2.resize(image[top : top + side, left : left + side], (size, size)))
        if len(crops) == limit:
            break
    if not crops:
        raise FileNotFoundError(f"no readable photo under {folder} for the parity check")
    return np.stack(crops)


def export_liveness_onnx(model: MiniFASNet, path: Path) -> Path:
    """Write `model` as ONNX: input `input` [batch, 3, S, S] float32 BGR 0-255, output
    `logits` [batch, classes] (softmax not included)."""
    size = model.input_size
    example = torch.rand(2, 3, size, size) * 255
    return write_onnx(model, path, example, INPUT_NAME, OUTPUT_NAME)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def check_liveness_parity(
    model: MiniFASNet,
    onnx_path: Path,
    crops: np.ndarray | None = None,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Largest |softmax difference| between onnxruntime and PyTorch over random 0-255 batches
    and `crops` ((n, S, S, 3) uint8 BGR, if given); raises `ParityError` above
    `tolerance`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    size = model.input_size
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(n, 3, size, size, generator=generator) * 255 for n in batch_sizes]
    if crops is not None and len(crops):
        batches.append(torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).float())
    worst = 0.0
    for images in batches:
        with torch.no_grad():
            expected = torch.softmax(model(images), dim=1).numpy()
        actual = _softmax(session.run(None, {INPUT_NAME: images.numpy()})[0])
        if actual.shape != expected.shape:
            raise ParityError(
                f"ONNX output {actual.shape} for batch {len(images)}, PyTorch {expected.shape}"
            )
        worst = max(worst, float(np.abs(actual - expected).max()))
    if not worst <= tolerance:
        raise ParityError(
            f"ONNX and PyTorch liveness probabilities differ by up to {worst:.3g} "
            f"(> {tolerance:g}): the export is wrong"
        )
    return worst


@dataclass
class LivenessExport:
    """What `export_liveness` produced."""

    pack_dir: Path
    manifest: PackManifest
    max_abs_diff: dict[str, float]


def export_liveness(
    checkpoints: Sequence[Path],
    pack_dir: Path,
    *,
    threshold: float = DEFAULT_LIVENESS_THRESHOLD,
    crops: np.ndarray | None = None,
    source: str = SOURCE,
    licence: str = LICENCE,
) -> LivenessExport:
    """Export `checkpoints` (parity-checked) into the pack at `pack_dir` and record them in its
    `pack.json` (replacing an earlier liveness entry)."""
    pack_dir = Path(pack_dir)
    manifest = load_pack(pack_dir).manifest  # the pack must load before and after
    specs, differences = [], {}
    for checkpoint in checkpoints:
        model, name = load_minifasnet(Path(checkpoint))
        onnx_path = export_liveness_onnx(model, pack_dir / f"liveness_{name.variant}.onnx")
        differences[onnx_path.name] = check_liveness_parity(model, onnx_path, crops)
        specs.append(
            LivenessModelSpec(
                file=onnx_path.name,
                sha256=sha256_file(onnx_path),
                variant=name.variant,
                scale=name.scale,
                input_size=name.input_size,
                color_order="BGR",
                mean=0.0,
                std=1.0,
            )
        )
    liveness = LivenessSpec(
        models=specs,
        live_class=LIVE_CLASS,
        num_classes=NUM_CLASSES,
        threshold=threshold,
        source=source,
        licence=licence,
    )
    manifest = manifest.model_copy(update={"liveness": liveness})
    target = pack_dir / MANIFEST_NAME
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.replace(temporary, target)  # a reader never sees half a manifest
    load_pack(pack_dir)  # what was written loads
    return LivenessExport(pack_dir, manifest, differences)
