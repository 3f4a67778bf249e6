"""The one table from error code to HTTP status, and the handlers that apply it.

Every error answer is `{"error": {"code": str, "message": str}}`; nothing reaches the client as
a bare 500 page, and no bad input can take the worker down.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.uploads import BodyTooLarge
from service.errors import ErrorCode, ServiceError

log = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_IMAGE: 400,
    ErrorCode.UNSUPPORTED_FORMAT: 415,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.IMAGE_TOO_LARGE: 413,
    ErrorCode.NO_FACE: 422,
    ErrorCode.FACE_TOO_SMALL: 422,
    ErrorCode.LOW_QUALITY: 422,
    ErrorCode.MULTIPLE_FACES: 422,
    ErrorCode.MISSING_FIELD: 422,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.IDENTITY_HAS_NO_FACES: 409,
    ErrorCode.MODEL_MISMATCH: 409,
    ErrorCode.NOT_READY: 503,
    ErrorCode.INTERNAL: 500,
}

_STATUS_CODES = {404: ErrorCode.NOT_FOUND, 413: ErrorCode.PAYLOAD_TOO_LARGE}


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """Shape of every error answer."""

    error: ErrorBody


def error_response(request: Request, code: ErrorCode, message: str, status: int | None = None):
    metrics = getattr(getattr(request.app.state, "services", None), "metrics", None)
    if metrics is None:
        metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code.value).inc()
    body = ErrorResponse(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=status or HTTP_STATUS[code])


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
        return error_response(request, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        code, message = _validation_message(exc)
        return error_response(request, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):
            return error_response(request, ErrorCode.PAYLOAD_TOO_LARGE, "request body too large")
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        return error_response(request, code, str(exc.detail), status=exc.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, ErrorCode.INTERNAL, "internal error; the server log has the details"
        )
