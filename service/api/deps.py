"""What routes depend on: the `Services` built once per app, injected with `Depends`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import FacePipeline
from service.faces.scheduler import InferenceScheduler
from service.metrics import Metrics
from service.packs import ModelPack
from service.settings import Settings

if TYPE_CHECKING:
    from service.gallery import Gallery


@dataclass
class Services:
    """Everything a request needs, created by the app's lifespan."""

    settings: Settings
    pack: ModelPack
    pipeline: FacePipeline
    metrics: Metrics
    gallery: Gallery | None = None
    # The app builds one sized to the machine (`plan_slots`); this default serves tests that
    # assemble Services by hand.
    scheduler: InferenceScheduler = field(default_factory=lambda: InferenceScheduler(slots=2))

    @property
    def threshold(self) -> float:
        """The server's default cosine threshold: FACEVERIFY_THRESHOLD, else the pack's."""
        configured = self.settings.threshold
        return self.pack.manifest.threshold if configured is None else configured


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet; retry shortly")
    return services


def get_gallery(request: Request) -> Gallery:
    gallery = get_services(request).gallery
    if gallery is None:
        raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
    return gallery
