"""Refusing state-changing requests that a browser sends for a page of another site.

Without API keys any page the user opens can make the browser send a form-like request (a
multipart photo, `fetch(url, {mode: "no-cors"})`) to the service: no CORS preflight guards
such "simple" requests, so the page could enrol a face or delete an identity, unseen. So a
POST, PUT, PATCH or DELETE is refused with 403 `cross_site_request` when the browser says it
comes from another site. The rule is the one Go's `net/http.CrossOriginProtection` applies:

1. `Sec-Fetch-Site: same-origin` or `none` (typed in, a bookmark): allowed.
2. An `Origin` that is the service's own (its host and port are the request's `Host`) or one of
   FACEVERIFY_ALLOWED_ORIGINS: allowed.
3. Any other `Sec-Fetch-Site` (`cross-site`, and `same-site`: a sibling subdomain or another port
   of the same host is another program, not this service's pages): refused.
4. No `Sec-Fetch-Site`: refused when an `Origin` is present (older browsers), allowed without
   one: curl, SDKs and servers send neither header, and keep working.

Reads (GET, HEAD, OPTIONS) are never refused here: a cross-site page cannot read their answers
without CORS, which the service does not grant.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ErrorCode

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of requests the service's own pages (or the user) make.
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})


def normalise_origin(origin: str) -> str:
    """`Scheme://Host:Port/` → `scheme://host:port` (lower case, no trailing slash)."""
    return origin.strip().lower().rstrip("/")


def parse_allowed_origins(text: str) -> frozenset[str]:
    origins = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(
                f"FACEVERIFY_ALLOWED_ORIGINS: {item!r} is not an origin like https://app.example.com"
            )
        origins.add(normalise_origin(item))
    return frozenset(origins)


def is_cross_site(method: str, headers: Headers, allowed_origins: frozenset[str]) -> bool:
    """Whether a request is a state-changing one a browser sent for another site's page."""
    if method not in STATE_CHANGING_METHODS:
        return False
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in SAME_ORIGIN_FETCH_SITES:
        return False
    origin = headers.get("origin")
    if origin is not None:
        origin = normalise_origin(origin)
        own_host = headers.get("host", "").strip().lower()
        if origin in allowed_origins or (own_host and urlsplit(origin).netloc == own_host):
            return False
    return bool(fetch_site) or origin is not None


class CrossSiteRefusal:
    """ASGI middleware answering 403 `cross_site_request` (see the module docstring)."""

    def __init__(self, app: ASGIApp, allowed_origins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_cross_site(
            scope["method"], Headers(scope=scope), self.allowed_origins
        ):
            await self.app(scope, receive, send)
            return
        message = (
            f"{scope['method']} refused: the request comes from another site's page; pages of "
            "other origins must be listed in FACEVERIFY_ALLOWED_ORIGINS"
        )
        response = error_response(Request(scope), ErrorCode.CROSS_SITE_REQUEST, message)
        await response(scope, receive, send)
