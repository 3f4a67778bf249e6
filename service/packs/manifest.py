"""The manifest of a model pack (`pack.json`, schema `PackManifest`) and the loaded pack.

`training.export` writes the manifest; the service reads it (or synthesises one for InsightFace
folders, see `service.packs.loading`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from service.packs.thresholds import Calibration

MANIFEST_NAME = "pack.json"

# Conservative default for ArcFace-family cosine similarities (of L2-normalised embeddings),
# used when neither a manifest nor the catalogue gives a threshold. It is not measured for any
# particular model: calibrate on your own pairs and override with FACEVERIFY_THRESHOLD.
DEFAULT_THRESHOLD = 0.35


class ModelFileSpec(BaseModel):
    """One ONNX file of a pack."""

    file: str = Field(description="File name inside the pack folder.")
    sha256: str | None = Field(None, description="Hex sha256 of the file; checked at load.")


class DetectorSpec(ModelFileSpec):
    """Face detector (SCRFD family: boxes, scores and 5 landmarks)."""

    kind: Literal["scrfd"] = "scrfd"
    input_size: int = 640
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 128.0


class RecognizerSpec(ModelFileSpec):
    """Face recognizer: aligned square crop in, embedding out."""

    input_size: int = 112
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 127.5
    embedding_size: int


class LivenessModelSpec(ModelFileSpec):
    """One passive liveness classifier: a square crop around the face in, class logits out.

    The crop is the detector's face box enlarged `scale` times around its centre, shifted and
    shrunk to stay inside the image, then resized to `input_size`; the pixels go in as
    `(x - mean) / std` in `color_order` (the MiniFASNet models take raw BGR 0-255)."""

    variant: str = Field("", description="Architecture, e.g. MiniFASNetV2.")
    scale: float = Field(gt=0.0, description="Crop side = face box side times this.")
    input_size: int = Field(80, gt=0)
    color_order: Literal["RGB", "BGR"] = "BGR"
    mean: float = 0.0
    std: float = 1.0


class LivenessSpec(BaseModel):
    """Passive liveness (presentation-attack detection) models of a pack: each face's score
    is the live-class softmax averaged over `models`; the face is judged live when the score
    reaches `threshold`."""

    models: list[LivenessModelSpec] = Field(min_length=1)
    live_class: int = Field(1, ge=0, description="Index of the live class in the outputs.")
    num_classes: int = Field(3, ge=2)
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Live when score >= this.")
    source: str = ""
    licence: str = ""


class PackManifest(BaseModel):
    """Contents of `pack.json`; `training.export` writes it, the service reads it."""

    schema_version: int = 1
    name: str
    detector: DetectorSpec
    recognizer: RecognizerSpec
    threshold: float = Field(description="Recommended cosine threshold for verification.")
    source: str = Field("", description="Where the weights come from (URL, training run).")
    licence: str = ""
    training: dict[str, object] | None = Field(
        None, description="Backbone, head, margins, data, evaluation results, target FAR."
    )
    thresholds: Calibration | None = Field(
        None, description="Thresholds by target FMR (`python -m service calibrate`)."
    )
    liveness: LivenessSpec | None = Field(
        None, description="Optional passive liveness models (`python -m training export-liveness`)."
    )


@dataclass(frozen=True)
class ModelPack:
    """A pack that exists on disk, verified and ready to load into onnxruntime."""

    name: str
    directory: Path
    manifest: PackManifest
    detector_path: Path
    recognizer_path: Path
    ignored_files: tuple[str, ...] = ()  # other ONNX files of the folder (landmarks, ...)
    liveness_paths: tuple[Path, ...] = ()  # one per `manifest.liveness.models`, same order

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: name plus the recognizer's sha256 prefix."""
        digest = (self.manifest.recognizer.sha256 or "")[:12]
        return f"{self.name}@{digest}" if digest else self.name
