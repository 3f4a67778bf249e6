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
    liveness: str = Field("off", description="FACEVERIFY_LIVENESS: off, report or require.")
    liveness_model: str | None = Field(
        None, description="The pack's liveness models, or null when it has none."
    )
