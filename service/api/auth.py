"""Optional API keys, for a service that holds biometric data.

With `FACEVERIFY_API_KEYS` set, every request needs one of the keys, as `X-API-Key: KEY` or
`Authorization: Bearer KEY`, except what infrastructure sends without secrets (liveness and
readiness probes, Prometheus scrapes) and the API description. Unset, nothing is checked.

An ASGI middleware rather than a route dependency: it answers before the body is read, so a
client without a key cannot make the service receive and parse a large upload.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ErrorCode

API_KEY_HEADER = "X-API-Key"
# Paths answered without a key: probes, the scrape, and the API description.
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    | {"/", "/console", "/favicon.ico", "/favicon.svg"}
)
# Path prefixes answered without a key: the documentation's and the console's own files (no
# data; the console asks for a key and sends it with each API call).
OPEN_PREFIXES = ("/docs/", "/console/")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="faceverify"'}


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: `X-API-Key`, else an `Authorization: Bearer` token."""
    key = headers.get(API_KEY_HEADER, "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_is_valid(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit on the first match)."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


class ApiKeyAuth:
    """Refuses requests without a valid key with 401 `unauthorized`. They never reach the
    router, so the request metrics count them under route `unmatched`, status 401."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        key = presented_key(request.headers)
        if key is not None and key_is_valid(key, self.keys):
            await self.app(scope, receive, send)
            return
        message = (
            f"an API key is needed: send {API_KEY_HEADER}: KEY or Authorization: Bearer KEY"
            if key is None
            else "the API key is not valid"
        )
        response = error_response(request, ErrorCode.UNAUTHORIZED, message, headers=CHALLENGE)
        await response(scope, receive, send)


def document_api_keys(schema: dict) -> dict:
    """Declare both ways of sending a key in an OpenAPI schema, required on every operation
    but those under OPEN_PATHS (in place; returns `schema`)."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "unauthorized",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                },
            }
    return schema
