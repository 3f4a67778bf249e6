"""The service's domain errors: one exception type carrying a stable, documented code.

Every layer below HTTP raises `ServiceError`; `service.api.errors` maps each code to an HTTP
status in one table, so clients can branch on `error.code` and never on a message.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable machine-readable error codes returned as `{"error": {"code": ...}}`."""

    INVALID_IMAGE = "invalid_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    NO_FACE = "no_face"
    FACE_TOO_SMALL = "face_too_small"
    LOW_QUALITY = "low_quality"
    MULTIPLE_FACES = "multiple_faces"
    MISSING_FIELD = "missing_field"
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    IDENTITY_HAS_NO_FACES = "identity_has_no_faces"
    MODEL_MISMATCH = "model_mismatch"
    NOT_READY = "not_ready"
    OVERLOADED = "overloaded"
    GALLERY_UNAVAILABLE = "gallery_unavailable"
    STORAGE_BUSY = "storage_busy"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    REQUEST_TIMEOUT = "request_timeout"
    CLIENT_DISCONNECTED = "client_disconnected"
    IMAGE_TOO_COMPLEX = "image_too_complex"
    CROSS_SITE_REQUEST = "cross_site_request"
    HOST_NOT_ALLOWED = "host_not_allowed"
    LIVENESS_FAILED = "liveness_failed"
    LIVENESS_UNAVAILABLE = "liveness_unavailable"
    INTERNAL = "internal_error"


class ServiceError(Exception):
    """An error the client can act on; `code` is stable, `message` says what to do."""

    def __init__(
        self, code: ErrorCode, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers  # HTTP headers the answer carries, e.g. Retry-After

    def __repr__(self) -> str:
        return f"ServiceError({self.code.value!r}, {self.message!r})"


class PackError(Exception):
    """A model pack is missing, incomplete, corrupt or not what its manifest says.

    Raised at start-up; `python -m service` prints it as one line and exits non-zero.
    """
