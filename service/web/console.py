"""The browser console at /console: static HTML, CSS and ES modules shipped in the package.

It calls the public HTTP API only (the same routes and keys as any client) and needs no build
step and no other host. The pages carry a Content-Security-Policy that lets them load and call
nothing but this service, so the rule "no other host" holds in the browser too.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

CONSOLE_PATH = "/console"
CONSOLE_FILES = Path(__file__).parent / "static" / "console"
# Photos are shown from blob: URLs of the files a person picked; nothing else leaves 'self'.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The console is small and changes with the service: always revalidate.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """StaticFiles that add the console's security headers to every file."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console under /console/ and redirect / and /console there."""
    app.mount(CONSOLE_PATH, ConsoleFiles(directory=CONSOLE_FILES, html=True), name="console")

    async def to_console(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{CONSOLE_PATH}/")

    for path in ("/", CONSOLE_PATH):
        app.add_api_route(path, to_console, methods=["GET"], include_in_schema=False)
