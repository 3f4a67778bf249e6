"""Request bodies: size and time limits enforced while they stream in, before anything is
decoded.

FastAPI has no request-body limit of its own, so `BodyLimits` refuses oversized requests
while they stream in (Content-Length or not), and `read_upload` checks each file. Only
multipart bodies (photo uploads) get the large limit; every other body (the JSON of the gallery
routes, or anything a client sends without a content type, which FastAPI parses as JSON) gets
a small one, so a huge JSON document is refused before it is parsed on the event loop.

A body must also arrive whole within FACEVERIFY_BODY_TIMEOUT_S of the request's headers (a
deadline for the whole body, not for each gap between chunks: a client sending one byte a
second never leaves a gap, yet would hold its connection for days): 408 `request_timeout`. A
client that goes away before its body is complete gets nothing, and is counted as
`client_disconnected` (status 499 in the request metrics), not as a malformed request.
"""

from __future__ import annotations

import asyncio

from fastapi import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, ServiceError
from service.settings import Settings

# Files per request (verify sends two) plus room for form fields and multipart framing.
MAX_FILES_PER_REQUEST = 2
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Any body that is not multipart: the largest JSON a route takes is an identity (a 200-character
# name and 16 KB of metadata, which JSON escapes can triple) or one embedding (512 floats, ~12 KB).
MAX_JSON_BODY_BYTES = 64 * 1024
# A read that starts after the body deadline still gets this long: data already buffered by the
# server is taken, never refused because the app asked for it late.
MIN_READ_WAIT_S = 0.05


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


class BodyReadError(Exception):
    """Raised from `receive` when a request body cannot be read to its end. FastAPI wraps it
    (as the `__cause__` of a 400), which `service.api.errors` turns back into its own code."""

    code = ErrorCode.VALIDATION_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyTooLarge(BodyReadError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class BodyTimeout(BodyReadError):
    code = ErrorCode.REQUEST_TIMEOUT


class ClientDisconnected(BodyReadError):
    code = ErrorCode.CLIENT_DISCONNECTED


def _too_large_message(limit: int) -> str:
    return f"request body is over {limit:,} bytes; only multipart uploads may be larger"


class BodyLimits:
    """ASGI middleware: 413 `payload_too_large` once a request body exceeds its limit
    (`max_bytes` for multipart uploads, `max_other_bytes` for any other body), 408
    `request_timeout` when it is not complete `timeout_s` after the headers, and
    `client_disconnected` (nothing sent, 499 counted) when the client leaves mid-body."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_other_bytes: int = MAX_JSON_BODY_BYTES,
        timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_other_bytes = max_other_bytes
        self.timeout_s = timeout_s

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
            await _refuse(scope, receive, send, BodyTooLarge(_too_large_message(limit)))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        body_complete = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later reads wait for the disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(max(deadline - loop.time(), MIN_READ_WAIT_S)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(FACEVERIFY_BODY_TIMEOUT_S)"
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("the client closed the connection before its body ended")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(_too_large_message(limit))
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyReadError as exc:
            if not started:
                await _refuse(scope, receive, send, exc)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: BodyReadError) -> None:
    """Answer `error` and close the connection: the rest of the body is never read."""
    from service.api.errors import error_response  # that module imports this one

    response = error_response(
        Request(scope), error.code, error.message, headers={"Connection": "close"}
    )
    await response(scope, receive, send)
