"""The API documentation (Swagger UI at /docs) from assets shipped with the service.

FastAPI's default /docs loads Swagger UI's script and stylesheet from a public CDN and its
favicon from FastAPI's site: without internet the page is blank. The same files come here from
the `fastapi-offline` package (Swagger UI 5, pinned in pyproject.toml), mounted under
/docs/assets. ReDoc is not served: its bundle always loads a logo from its vendor's CDN, so
/redoc redirects to /docs instead.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
DOCS_ASSETS_PATH = "/docs/assets"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
FAVICON_PATHS = ("/favicon.ico", "/favicon.svg")
FAVICON_FILE = Path(__file__).parent / "static" / "favicon.svg"
# Swagger UI's own defaults that would reach the internet: the spec validator badge.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# The docs pages may not be framed by any page (clickjacking the "Try it out" buttons): CSP
# `frame-ancestors` for current browsers, `X-Frame-Options` for older ones.
FRAMING_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


def swagger_ui_assets() -> Path:
    """The folder holding swagger-ui-bundle.js and swagger-ui.css (package data of
    fastapi-offline, a declared dependency)."""
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve /docs, its assets, the OAuth2 redirect page, the favicon, and /redoc → /docs.
    The app must be created with `docs_url=None, redoc_url=None`."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API documentation",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_PATH}",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{FAVICON_PATHS[1]}",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_UI_PARAMETERS},
        )
        page.headers.update(FRAMING_HEADERS)
        return page

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        page = get_swagger_ui_oauth2_redirect_html()
        page.headers.update(FRAMING_HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{DOCS_PATH}")

    for path in FAVICON_PATHS:
        app.add_api_route(path, _favicon, methods=["GET"], include_in_schema=False)


async def _favicon() -> FileResponse:
    return FileResponse(FAVICON_FILE, media_type="image/svg+xml")
