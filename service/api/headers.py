"""Response headers that keep the API's answers out of caches and content sniffing.

API answers carry embeddings, names and metadata: `Cache-Control: no-store` keeps them out of
browser and proxy caches (unless a route set its own caching), and `X-Content-Type-Options:
nosniff` on every answer stops a browser from reading a JSON or text answer as HTML or script.
The console (`service.web.console`) and the API docs (`service.web.docs`) set their own page
headers (content security policy, framing); this middleware never overwrites a header a route
set.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Content types of API answers (JSON, including problem+json); other answers (pages, scripts,
# the scrape) keep their caching.
API_CONTENT_TYPES = ("application/json", "application/problem+json")


class SecurityHeaders:
    """ASGI middleware adding `X-Content-Type-Options: nosniff` to every answer and
    `Cache-Control: no-store` to JSON ones, where the route set neither."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if content_type in API_CONTENT_TYPES:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
