"""Request metrics: count and time every request by its route template (not its raw path,
which would explode label cardinality with ids).

Every label value comes from a closed set, never from the client: the route template (or
`unmatched`), a known HTTP method (anything else, and HTTP's parser accepts any token as a
method, counts as `other`), and the status the app answered.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

# Methods counted under their own name; any other token a client sends is `other`.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The `method` label of a request: its method if standard, else `other`."""
    return method if method in KNOWN_METHODS else "other"


class RequestMetrics:
    """ASGI middleware recording `faceverify_requests_total` and request latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, method_label(scope["method"]), str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - start)
