"""Uploaded files: size limits enforced before anything is decoded.

FastAPI has no request-body limit of its own, so `BodySizeLimit` refuses oversized requests
while they stream in (Content-Length or not), and `read_upload` checks each file.
"""

from __future__ import annotations

import json

from fastapi import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, ServiceError
from service.settings import Settings

# Files per request (verify sends two) plus room for form fields and multipart framing.
MAX_FILES_PER_REQUEST = 2
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def request_body_limit(settings: Settings) -> int:
    return settings.max_upload_bytes * MAX_FILES_PER_REQUEST + MULTIPART_OVERHEAD_BYTES


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """The bytes of one uploaded file, refusing it if over `max_upload_bytes`."""
    limit = settings.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise _too_large(file.size, limit, file.filename)
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise _too_large(None, limit, file.filename)
    return data


def _too_large(size: int | None, limit: int, name: str | None) -> ServiceError:
    actual = f"{size:,} bytes" if size is not None else "over the limit"
    return ServiceError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"upload {name!r} is {actual}; the limit is {limit:,} bytes (FACEVERIFY_MAX_UPLOAD_BYTES)",
    )


class BodySizeLimit:
    """ASGI middleware: 413 `payload_too_large` once a request body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": ErrorCode.PAYLOAD_TOO_LARGE.value,
                    "message": f"request body is over {self.max_bytes:,} bytes",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    """Raised from `receive` when the body passes the limit; FastAPI may wrap it (as the
    `__cause__` of a 400), which `service.api.errors` turns back into a 413."""
