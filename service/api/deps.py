"""What routes depend on: the `Services` built once per app, injected with `Depends`; a request
reaches the gallery through `services.gallery_calls` (`service.api.gallery_calls`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from service.api.admission import InferenceScheduler
from service.api.gallery_calls import GalleryCalls
from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import FacePipeline
from service.metrics import Metrics
from service.packs import ModelPack
from service.settings import Settings

if TYPE_CHECKING:
    from service.gallery import Gallery
    from service.gallery.fpir import FpirCalibrator


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
    # Keeps /identify's FPIR thresholds measured on the gallery (service.gallery.fpir).
    fpir: FpirCalibrator | None = None
    gallery_calls: GalleryCalls = field(init=False)

    def __post_init__(self) -> None:
        self.gallery_calls = GalleryCalls(
            self.settings.gallery_timeout_s, self.settings.gallery_concurrency
        )

    @property
    def threshold(self) -> float:
        """The server's default cosine threshold (`default_threshold`)."""
        return self.default_threshold()[0]

    def default_threshold(self) -> tuple[float, str]:
        """(threshold, source) when a request names none (`default_threshold`)."""
        return default_threshold(self.settings, self.pack)


def default_threshold(settings: Settings, pack: ModelPack) -> tuple[float, str]:
    """(threshold, source) when a request names none: FACEVERIFY_THRESHOLD (`settings`), else
    the pack's (`pack default`). The one place the default is chosen (the CLI's gallery report
    uses it too)."""
    if settings.threshold is not None:
        return settings.threshold, "settings"
    return pack.manifest.threshold, "pack default"


def startup_failure(request: Request) -> str | None:
    """Why loading the models or the gallery failed, or None (loaded, or still loading)."""
    return getattr(request.app.state, "startup_error", None)


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        failure = startup_failure(request)
        if failure is not None:
            raise ServiceError(
                ErrorCode.NOT_READY, f"start-up failed ({failure}); the server log has details"
            )
        raise ServiceError(ErrorCode.NOT_READY, "models are not loaded yet; retry shortly")
    return services


def require_json_body(request: Request) -> None:
    """415 `unsupported_media_type` unless the body is declared as JSON (`application/json` or
    a `+json` type); a body with no content type is refused too rather than guessed."""
    declared = request.headers.get("content-type") or "none"
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "this route takes a JSON body sent as Content-Type: application/json, "
            f"not {media_type!r}",
        )


def get_gallery_calls(request: Request) -> GalleryCalls:
    return get_services(request).gallery_calls


def get_gallery(request: Request) -> Gallery:
    return gallery_of(get_services(request))


def gallery_of(services: Services) -> Gallery:
    """The open gallery, or 503 `not_ready` (for routes that need it only sometimes)."""
    if services.gallery is None:
        raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
    return services.gallery
