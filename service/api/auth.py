"""Optional API keys with scopes, for a service that holds biometric data.

With keys configured (`FACEVERIFY_API_KEYS` and/or `FACEVERIFY_API_KEYS_FILE`, see
`service.keys`), every request needs one, as `X-API-Key: KEY` or `Authorization: Bearer KEY`,
except what infrastructure sends without secrets (liveness and readiness probes, Prometheus
scrapes) and the API description. A valid key without the scope its route needs
(`ROUTE_SCOPES`) gets 403 `forbidden`. Unset, nothing is checked.

An ASGI middleware rather than a route dependency: it answers before the body is read, so a
client without a key (or without the right to the route) cannot make the service receive and
parse a large upload. The key's name goes into the request state (`STATE_KEY_NAME`) for the
rate limiter and the audit log.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ErrorCode
from service.keys import ADMIN_SCOPE, KeyRing

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
# Where the authenticated key's name and scopes are kept in the ASGI scope's `state`.
STATE_KEY_NAME = "api_key_name"
STATE_KEY_SCOPES = "api_key_scopes"

# The scope each route needs, by method and path template. Anything missing here needs
# `admin` (fail closed); tests/service/test_scopes.py checks that every route is listed.
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("POST", "/verify"): "verify",
    ("POST", "/embed"): "verify",
    ("POST", "/detect"): "verify",
    ("POST", "/identify"): "identify",
    ("GET", "/identities"): "gallery:read",
    ("GET", "/identities/{identity_id}"): "gallery:read",
    ("POST", "/identities"): "gallery:write",
    ("PATCH", "/identities/{identity_id}"): "gallery:write",
    ("DELETE", "/identities/{identity_id}"): "gallery:write",
    ("POST", "/identities/{identity_id}/faces"): "gallery:write",
    ("DELETE", "/identities/{identity_id}/faces/{face_id}"): "gallery:write",
    ("GET", "/identities/{identity_id}/faces/{face_id}"): "gallery:read",
    ("POST", "/identities/{identity_id}/embeddings"): "gallery:write",
    ("GET", "/status"): "gallery:read",
    ("GET", "/gallery/report"): "gallery:read",
    ("GET", "/gallery/report.png"): "gallery:read",
}


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: `X-API-Key`, else an `Authorization: Bearer` token."""
    key = headers.get(API_KEY_HEADER, "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


_ROUTE_PATTERNS = [
    (method, compile_path(path)[0], scope) for (method, path), scope in ROUTE_SCOPES.items()
]


def required_scope(method: str, path: str) -> str:
    """The scope a request needs. A method and path outside ROUTE_SCOPES (an unknown path, a
    route added without a scope) need `admin`: closed by default, never open."""
    method = "GET" if method == "HEAD" else method
    for route_method, pattern, scope in _ROUTE_PATTERNS:
        if route_method == method and pattern.match(path):
            return scope
    return ADMIN_SCOPE


class ApiKeyAuth:
    """Refuses requests without a valid key with 401 `unauthorized`, and those whose key lacks
    the route's scope with 403 `forbidden`. They never reach the router, so the request
    metrics count them under route `unmatched`."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        presented = presented_key(request.headers)
        key = self.keys.authenticate(presented) if presented is not None else None
        if key is None:
            message = (
                f"an API key is needed: send {API_KEY_HEADER}: KEY or Authorization: Bearer KEY"
                if presented is None
                else "the API key is not valid (unknown or revoked)"
            )
            response = error_response(request, ErrorCode.UNAUTHORIZED, message, headers=CHALLENGE)
            await response(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        if not key.allows(needed):
            message = (
                f"the key {key.name!r} lacks the scope {needed!r} that {scope['method']} "
                f"{scope['path']} needs; it holds {', '.join(key.scopes)}"
            )
            response = error_response(request, ErrorCode.FORBIDDEN, message)
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[STATE_KEY_NAME] = key.name
        state[STATE_KEY_SCOPES] = key.scopes
        await self.app(scope, receive, send)


def key_allows(request: Request, needed: str, *, keys_enabled: bool) -> bool:
    """Whether the request may see what `needed` guards inside an answer (a route open to a
    narrower scope that would otherwise show it gallery data). Without keys, everything is
    open; with keys, a request that carries no authenticated scopes is refused (closed)."""
    if not keys_enabled:
        return True
    scopes = request.scope.get("state", {}).get(STATE_KEY_SCOPES, ())
    return ADMIN_SCOPE in scopes or needed in scopes


def document_api_keys(schema: dict) -> dict:
    """Declare both ways of sending a key in an OpenAPI schema, required on every operation
    but those under OPEN_PATHS, with the scope each needs (in place; returns `schema`)."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for method, operation in operations.items():
            scope = ROUTE_SCOPES.get((method.upper(), path), ADMIN_SCOPE)
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            operation["x-required-scope"] = scope
            responses = operation.setdefault("responses", {})
            responses["401"] = {"description": "unauthorized", "content": error}
            responses["403"] = {
                "description": f"forbidden (the key lacks scope `{scope}`)",
                "content": error,
            }
    return schema
