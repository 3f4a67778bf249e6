"""INT8 recognizer packs, written only when they answer as the FP32 recognizer does.

INT8 kernels (VNNI, AMX) can run a recognizer faster on CPU, but quantisation moves
embeddings: a pack is only worth serving if its decisions do not change.
`quantize_recognizer_pack` quantises a pack's recognizer statically (onnxruntime QDQ format,
per-channel weights, activation ranges calibrated on the aligned crops of the given photos; the
stem and the head of the network stay FP32, see `Fp32Layers`), then compares the two
recognizers on those crops: cosine between the FP32 and INT8 embedding of every face, and the
match decision at the pack threshold for every pair of photos, or for the pairs of a CSV
(deepface's master.csv), each photo by its largest face. A pack that fails either check is
refused and nothing is written at the target.
"""

from __future__ import annotations

import csv
import itertools
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from service.faces.alignment import align_face
from service.faces.embedder import Embedder
from service.faces.images import decode_image
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.packs.checksums import sha256_file
from service.packs.manifest import MANIFEST_NAME, ModelPack
from service.runtime import RuntimeOptions, create_session

# Lowest cosine accepted between a face's FP32 and INT8 embeddings (issue 15's parity bar).
COSINE_FLOOR = 0.99
# Per-channel QDQ needs DequantizeLinear's `axis`, which appeared in opset 13.
QDQ_MIN_OPSET = 13


class QuantizeError(ValueError):
    """The recognizer could not be quantised, or its INT8 version failed parity."""


@dataclass(frozen=True)
class FaceCrop:
    """One aligned face crop; `largest` marks the face a 1:1 decision uses for its photo."""

    photo: str
    crop: np.ndarray
    largest: bool


@dataclass(frozen=True)
class ParityReport:
    """How the INT8 recognizer compares with the FP32 one on real crops."""

    faces: int
    worst_cosine: float
    median_cosine: float
    worst_photo: str
    pairs: int
    changed_decisions: int
    threshold: float

    @property
    def passed(self) -> bool:
        return self.worst_cosine >= COSINE_FLOOR and self.changed_decisions == 0

    def describe(self) -> str:
        faces = f"{self.faces} faces: cosine FP32/INT8 min {self.worst_cosine:.4f}"
        return (
            f"{faces} ({self.worst_photo}), median {self.median_cosine:.4f} "
            f"(floor {COSINE_FLOOR}); {self.changed_decisions} of {self.pairs} pair decisions "
            f"changed at threshold {self.threshold:.3f}"
        )


def aligned_crops(pack: ModelPack, photos: Sequence[Path]) -> list[FaceCrop]:
    """Every face the pack's detector finds in `photos`, aligned as the service aligns it."""
    pipeline = FacePipeline.from_pack(pack, PipelineOptions(), RuntimeOptions(providers="cpu"))
    size = pipeline.embedder.input_size
    minimum = pipeline.options.min_face_size
    crops = []
    for path in photos:
        image = decode_image(path.read_bytes())
        faces = [f for f in pipeline.detector.detect(image) if min(f.width, f.height) >= minimum]
        for index, face in enumerate(faces):  # largest first
            crops.append(FaceCrop(path.name, align_face(image, face.landmarks, size), index == 0))
    return crops


class _CropReader(CalibrationDataReader):
    """Feeds the recognizer's input blobs to onnxruntime's calibrator, one crop at a time."""

    def __init__(self, input_name: str, blob: np.ndarray) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: blob[i : i + 1]} for i in range(len(blob))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


@dataclass(frozen=True)
class Fp32Layers:
    """The ends of the network kept in FP32: the first `stem_convs` Conv nodes and the last
    `head_nodes` nodes in graph order. Quantisation error is worst there for face recognizers
    (the stem sees raw pixels; the head's depthwise and linear layers feed the embedding)."""

    stem_convs: int = 3
    head_nodes: int = 20

    def nodes(self, graph: onnx.GraphProto) -> list[str]:
        convs = [node.name for node in graph.node if node.op_type == "Conv"]
        head = [node.name for node in graph.node][-self.head_nodes :] if self.head_nodes else []
        return convs[: self.stem_convs] + head


def quantize_model(
    source: Path,
    target: Path,
    embedder: Embedder,
    crops: list[np.ndarray],
    fp32: Fp32Layers = Fp32Layers(),
) -> None:
    """Write `source` statically quantised to INT8 (QDQ, per-channel weights) to `target`,
    calibrating activation ranges on `crops` pre-processed as `embedder` does; the layers
    of `fp32` stay in FP32."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "fp32.onnx"
        # onnxruntime's own preparation: shape inference and graph fusions (BatchNorm into
        # Conv), so the quantiser and `Fp32Layers` see the graph onnxruntime will run.
        quant_pre_process(str(source), str(prepared))
        model = onnx.load(str(prepared))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < QDQ_MIN_OPSET:
            model = version_converter.convert_version(model, QDQ_MIN_OPSET)
        onnx.save(model, str(prepared))
        input_name = model.graph.input[0].name
        root = logging.getLogger()  # onnxruntime.quantization advises on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(prepared),
                str(target),
                _CropReader(input_name, embedder.input_blob(crops)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=fp32.nodes(model.graph),
            )
        except Exception as exc:  # onnxruntime raises many types for graphs it cannot quantise
            raise QuantizeError(f"{source}: onnxruntime could not quantise it: {exc}") from exc
        finally:
            root.setLevel(level)


def check_parity(
    reference: Embedder,
    quantised: Embedder,
    crops: Sequence[FaceCrop],
    threshold: float,
    named_pairs: Sequence[tuple[str, str]] | None = None,
) -> ParityReport:
    """Compare the two recognizers' unit embeddings of `crops` (see the module docstring);
    decisions on `named_pairs` of photo file names when given, else on every pair."""
    images = [face.crop for face in crops]
    ours = reference.embed(images).embeddings
    theirs = quantised.embed(images).embeddings
    cosines = np.sum(ours * theirs, axis=1)
    worst = int(np.argmin(cosines))
    largest = [i for i, face in enumerate(crops) if face.largest]
    pairs = list(itertools.combinations(largest, 2))
    if named_pairs is not None:
        by_name = {crops[i].photo: i for i in largest}
        missing = sorted({n for pair in named_pairs for n in pair if n not in by_name})
        if missing:
            raise QuantizeError(f"no face found in {len(missing)} paired photos: {missing[:3]}")
        pairs = [(by_name[a], by_name[b]) for a, b in named_pairs]
    changed = sum(
        (float(ours[a] @ ours[b]) >= threshold) != (float(theirs[a] @ theirs[b]) >= threshold)
        for a, b in pairs
    )
    return ParityReport(
        faces=len(crops),
        worst_cosine=float(cosines[worst]),
        median_cosine=float(np.median(cosines)),
        worst_photo=crops[worst].photo,
        pairs=len(pairs),
        changed_decisions=changed,
        threshold=threshold,
    )


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Photo file name pairs from a CSV with `file_x` and `file_y` columns (deepface's
    master.csv)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file_x", "file_y"} <= set(rows[0]):
        raise QuantizeError(f"{path} is not a CSV with file_x and file_y columns")
    return [(row["file_x"], row["file_y"]) for row in rows]


def quantize_recognizer_pack(
    source: Path,
    target: Path,
    photos: Sequence[Path],
    fp32: Fp32Layers = Fp32Layers(),
    pairs: Sequence[tuple[str, str]] | None = None,
) -> ParityReport:
    """Write a copy of the pack at `source` whose recognizer is INT8 to `target` (a new folder,
    with a pack.json), if it passes parity on `photos` (decisions on `pairs` of photo names,
    or on every pair); raise QuantizeError otherwise."""
    if target.exists() and any(target.iterdir()):
        raise QuantizeError(f"{target} already exists and is not empty: choose a new folder")
    pack = load_pack(source)
    crops = aligned_crops(pack, photos)
    if len(crops) < 2:
        raise QuantizeError(f"found {len(crops)} faces in {len(photos)} photos; parity needs more")
    runtime = RuntimeOptions(providers="cpu")
    reference = Embedder(create_session(pack.recognizer_path, runtime), pack.manifest.recognizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        recognizer_file = f"{pack.recognizer_path.stem}_int8.onnx"
        quantised_path = staging / recognizer_file
        quantize_model(
            pack.recognizer_path, quantised_path, reference, [c.crop for c in crops], fp32
        )
        spec = pack.manifest.recognizer.model_copy(
            update={"file": recognizer_file, "sha256": sha256_file(quantised_path)}
        )
        quantised = Embedder(create_session(quantised_path, runtime), spec)
        report = check_parity(reference, quantised, crops, pack.manifest.threshold, pairs)
        if not report.passed:
            raise QuantizeError(f"INT8 recognizer refused, it fails parity: {report.describe()}")
        shutil.copy2(pack.detector_path, staging / pack.detector_path.name)
        manifest = pack.manifest.model_copy(
            update={
                "name": f"{pack.name}-int8",
                "recognizer": spec,
                "thresholds": None,  # calibrations belong to the FP32 recognizer's sha256
                "source": f"{pack.manifest.source or source} (recognizer quantised to INT8)",
            }
        )
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if target.exists():
            target.rmdir()
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
