"""Uploaded files: size limits enforced before anything is decoded.

FastAPI has no request-body limit of its own, so `BodySizeLimit` refuses oversized requests
while they stream in (Content-Length or not), and `read_upload` checks each file. Only
multipart bodies (photo uploads) get the large limit; every other body (the JSON of the gallery
routes, or anything a client sends without a content type, which FastAPI parses as JSON) gets
a small one, so a huge JSON document is refused before it is parsed on the event loop.
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
# Any body that is not multipart: the largest JSON a route takes is an identity (a 200-character
# name and 16 KB of metadata, which JSON escapes can triple) or one embedding (512 floats, ~12 KB).
MAX_JSON_BODY_BYTES = 64 * 1024


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


def is_multipart(content_type: bytes | None) -> bool:
    return (content_type or b"").split(b";", 1)[0].strip().lower() == b"multipart/form-data"


class BodySizeLimit:
    """ASGI middleware: 413 `payload_too_large` once a request body exceeds its limit:
    `max_bytes` for multipart uploads, `max_other_bytes` for any other body."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_other_bytes: int = MAX_JSON_BODY_BYTES
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_other_bytes = max_other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = (
            self.max_bytes if is_multipart(headers.get(b"content-type")) else self.max_other_bytes
        )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
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
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": ErrorCode.PAYLOAD_TOO_LARGE.value,
                    "message": f"request body is over {limit:,} bytes; only multipart "
                    "uploads may be larger",
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
