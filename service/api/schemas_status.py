"""Pydantic models of GET /status: what a person (or the console) needs to know about the
running service in one answer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IndexStatus(BaseModel):
    type: str = Field(description="FAISS index this worker searches: flat, hnsw or ivf.")
    device: str = Field(description="cpu or gpu.")
    size: int = Field(description="Faces in this worker's index.")


class GalleryCounts(BaseModel):
    identities: int
    faces: int = Field(description="Enrolled faces, of every model.")


class FpirTarget(BaseModel):
    threshold: float | None = None
    fpir: float | None = Field(None, description="FPIR the threshold gives, as measured.")
    interval: tuple[float, float] | None = Field(None, description="95% interval of `fpir`.")
    method: str | None = Field(None, description="`leave-one-out` or `pack-calibration`.")
    unsupported: str | None = Field(None, description="Why the gallery cannot support it.")


class FpirMeasurement(BaseModel):
    gallery_size: int = Field(description="Identities when measured.")
    probes: int = Field(description="Enrolled identities searched as strangers.")
    impostor_pairs: int = Field(description="Between-identity pairs of the probes' faces.")
    measured_at: float = Field(description="Unix time of the measurement.")
    duration_s: float
    thresholds: dict[str, FpirTarget] = Field(description="By target FPIR.")


class FpirStatus(BaseModel):
    """/identify's thresholds by false-positive identification rate (service.gallery.fpir)."""

    default_target: float | None = Field(
        description="FACEVERIFY_IDENTIFY_FPIR: the FPIR /identify uses when a request names no "
        "threshold (null: the 1:1 threshold)."
    )
    measured: FpirMeasurement | None = Field(
        description="The last measurement: gallery size, probes, impostor pairs, when, and the "
        "threshold at FPIR 0.1, 0.01 and 0.001 (or why the gallery cannot support it); null "
        "until a request or the default asks for an FPIR."
    )
    error: str | None = Field(None, description="Why the last measurement failed, if it did.")


class ServiceStatus(BaseModel):
    """The loaded model pack, the runtime, the decision threshold and the gallery."""

    version: str = Field(description="faceverify version.")
    model: str = Field(description="Model pack (name@recognizer-sha256-prefix).")
    pack: str = Field(description="Model pack name.")
    detector: str = Field(description="Detector ONNX file of the pack.")
    recognizer: str = Field(description="Recognizer ONNX file of the pack.")
    embedding_size: int
    provider: str = Field(description="onnxruntime execution provider really in use.")
    threshold: float = Field(description="Cosine threshold used when a request gives none.")
    pack_threshold: float = Field(description="The threshold the pack recommends.")
    index: IndexStatus
    gallery: GalleryCounts
    max_upload_bytes: int = Field(description="Largest file one upload may be.")
    api_keys: bool = Field(description="Whether requests need an API key.")
    identify_fpir: FpirStatus
    liveness: str = Field("off", description="FACEVERIFY_LIVENESS: off, report or require.")
    liveness_model: str | None = Field(
        None, description="The pack's liveness models, or null when it has none."
    )
