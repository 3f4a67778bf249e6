"""The one table from error code to HTTP status, and the handlers that apply it.

Every error answer is `{"error": {"code": str, "message": str}}`; nothing reaches the client as
a bare 500 page, and no bad input can take the worker down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.uploads import BodyReadError
from service.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.UNSUPPORTED_FORMAT: 415,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.NO_FACE: 422,
    ErrorCode.FACE_TOO_SMALL: 422,
    ErrorCode.LOW_QUALITY: 422,
    ErrorCode.MULTIPLE_FACES: 422,
    ErrorCode.MISSING_FIELD: 422,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.IDENTITY_HAS_NO_FACES: 409,
    ErrorCode.MODEL_MISMATCH: 409,
    ErrorCode.NOT_READY: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.GALLERY_UNAVAILABLE: 503,
    ErrorCode.STORAGE_BUSY: 503,
    ErrorCode.INSUFFICIENT_STORAGE: 507,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.CLIENT_DISCONNECTED: 499,  # nginx's "client closed request": never sent, counted
    ErrorCode.IMAGE_TOO_COMPLEX: 422,
    ErrorCode.CROSS_SITE_REQUEST: 403,
    ErrorCode.HOST_NOT_ALLOWED: 400,
    ErrorCode.LIVENESS_FAILED: 422,
    ErrorCode.LIVENESS_UNAVAILABLE: 409,  # the loaded pack has no liveness models
    ErrorCode.INTERNAL: 500,
}

# Codes for the HTTP errors Starlette and FastAPI raise themselves. Any other (FastAPI's 400
# for a body it cannot parse: not UTF-8, not JSON, broken multipart) is a `validation_error`,
# answered with that code's status, so a code always comes with the status the table gives it.
_STATUS_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}

# Methods a route of this service can answer, probed in this order to fill a 405's Allow.
_ROUTABLE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """Shape of every error answer."""

    error: ErrorBody


def documented(errors: dict[int, str]) -> dict[int | str, dict]:
    """OpenAPI `responses` for a route's error answers: status -> the error codes it carries.
    Every route that needs the models or the gallery may answer 503 `not_ready`, so that one
    is always listed; routes that run the models add `overloaded` with `INFERENCE_ERRORS`."""
    return {
        status: {"model": ErrorResponse, "description": codes}
        for status, codes in {503: "not_ready", **errors}.items()
    }


# The 503s of a route that runs the pipeline through the inference scheduler.
INFERENCE_ERRORS = {503: "not_ready, overloaded (queue full; see Retry-After)"}
# The 503s of a route that reads or writes the gallery (`GalleryCalls`), and of one that also
# runs the pipeline.
GALLERY_ERRORS = {
    503: "not_ready, gallery_unavailable (the gallery did not answer; see Retry-After)"
}
GALLERY_INFERENCE_ERRORS = {
    503: "not_ready, overloaded (queue full), gallery_unavailable (see Retry-After)"
}


def error_response(
    request: Request, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
):
    metrics = getattr(getattr(request.app.state, "services", None), "metrics", None)
    if metrics is None:
        metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code.value).inc()
    body = ErrorResponse(error=ErrorBody(code=code, message=message))
    return JSONResponse(
        body.model_dump(mode="json"), status_code=HTTP_STATUS[code], headers=headers
    )


def _allowed_methods(request: Request) -> str:
    """The methods some route answers on the request's path, for a 405's Allow header (RFC 9110
    15.5.6 asks for all of them; Starlette names only those of the first route on the path)."""
    allowed = []
    for method in _ROUTABLE_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


def _validation_message(exc: RequestValidationError) -> tuple[ErrorCode, str]:
    problems = []
    missing = False
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        missing = missing or error.get("type") == "missing"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    code = ErrorCode.MISSING_FIELD if missing else ErrorCode.VALIDATION_ERROR
    return code, "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError):
        return error_response(request, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        code, message = _validation_message(exc)
        return error_response(request, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, BodyReadError):  # too large, too slow, client gone
            cause = exc.__cause__
            return error_response(
                request, cause.code, cause.message, headers={"Connection": "close"}
            )
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        message = str(exc.detail)
        headers = dict(exc.headers or {})
        if code is ErrorCode.METHOD_NOT_ALLOWED:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
            message = (
                f"{request.method} is not allowed on {request.url.path}; use {headers['Allow']}"
            )
        elif code is ErrorCode.VALIDATION_ERROR:
            message = (
                f"{message.rstrip('.')}: send the body the route documents (a JSON object in "
                "UTF-8, or multipart/form-data with a boundary)"
            )
        # Headers carry what the client needs to retry, such as the Allow list of a 405.
        return error_response(request, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, ErrorCode.INTERNAL, "internal error; the server log has the details"
        )
