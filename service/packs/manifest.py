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


@dataclass(frozen=True)
class ModelPack:
    """A pack that exists on disk, verified and ready to load into onnxruntime."""

    name: str
    directory: Path
    manifest: PackManifest
    detector_path: Path
    recognizer_path: Path
    ignored_files: tuple[str, ...] = ()  # other ONNX files of the folder (landmarks, ...)

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: name plus the recognizer's sha256 prefix."""
        digest = (self.manifest.recognizer.sha256 or "")[:12]
        return f"{self.name}@{digest}" if digest else self.name
