"""Nothing the service shows a person points at another host: every page it serves (the docs,
the console, their scripts, styles and icon, error answers) is read back over HTTP and searched
for http:// and https:// URLs. No browser needed; the browser tests prove the same by blocking."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from synthetic_models import make_manifest_pack

from service.web.docs import DOCS_ASSETS_PATH

URL = re.compile(r"https?://[^\s\"'`<>)\\$]*")  # `$`: a template literal's ${...} ends it
# XML namespace names: identifiers inside SVG and XHTML markup, never fetched.
NAMESPACES = ("http://www.w3.org/",)
# Hosts named in Swagger UI 5's bundle (the version fastapi-offline 1.7.7 ships) as identifiers,
# spec references, error-page links and link-ification patterns: text, never requested by the
# page (tests/service/web/test_docs_offline.py blocks every other host and sees no request).
# validator.swagger.io is Swagger UI's default spec validator: /docs sets validatorUrl to null.
# A new Swagger UI that names another host fails here until someone has looked at it.
SWAGGER_UI_TEXT_HOSTS = frozenset(
    {
        "www.w3.org", "datatracker.ietf.org", "www.rfc-editor.org", "spec.openapis.org",
        "github.com", "json-schema.org", "validator.swagger.io", "www.tiktok.com",
        "twitter.com", "instagram.com", "www.facebook.com", "soundcloud.com", "example.com",
        "실례.com", "vladimirgorej.com", "swagger.io", "spdx.org", "redux.js.org",
        "reactjs.org", "fb.me", "",
        "base",  # `https://base${random}`: a dummy base for parsing relative URLs
    }
)  # fmt: skip
SWAGGER_UI_BUNDLE = f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js"


class _References(HTMLParser):
    """What an HTML page loads: the src and href of its tags (links to other pages aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":  # a link the person may follow, not something the page loads
            return
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


IMPORT = re.compile(r"""(?:import|from)\s*\(?\s*["']([^"']+)["']""")
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""")


def served_files(client, start: list[str]) -> dict[str, str]:
    """Path -> text of each start page and everything it references on the service
    (scripts, module imports, stylesheets, icons), followed recursively."""
    seen: dict[str, str] = {}
    queue = list(start)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        response = client.get(path)
        assert response.status_code == 200, f"{path} answered {response.status_code}"
        text = response.text
        seen[path] = text
        kind = response.headers["content-type"]
        found: list[str] = []
        if "html" in kind:
            parser = _References()
            parser.feed(text)
            found = parser.urls
        elif "javascript" in kind and path != SWAGGER_UI_BUNDLE:
            found = IMPORT.findall(text)
        elif "css" in kind:
            found = [url for url in CSS_URL.findall(text) if not url.startswith("data:")]
        for reference in found:
            target = urljoin(f"http://testserver{path}", reference)
            parts = urlsplit(target)
            if parts.netloc == "testserver" and parts.path not in seen:
                queue.append(parts.path)
    return seen


def external_urls(text: str) -> list[str]:
    return [url for url in URL.findall(text) if not url.startswith(NAMESPACES)]


@pytest.fixture
def client(app_client, tmp_path):
    with app_client(make_manifest_pack(tmp_path / "pack")) as client:
        yield client


def test_docs_pages_and_their_assets_are_served_by_the_service(client):
    pages = served_files(client, ["/docs", "/docs/oauth2-redirect"])
    assert SWAGGER_UI_BUNDLE in pages
    assert f"{DOCS_ASSETS_PATH}/swagger-ui.css" in pages
    assert "/favicon.svg" in pages
    assert '"validatorUrl": null' in pages["/docs"]
    for path, text in pages.items():
        if path != SWAGGER_UI_BUNDLE:
            assert external_urls(text) == [], f"{path} references another host"


def test_swagger_ui_bundle_names_only_reviewed_hosts(client):
    text = client.get(SWAGGER_UI_BUNDLE).text
    hosts = {urlsplit(url).netloc for url in URL.findall(text)}
    assert hosts - SWAGGER_UI_TEXT_HOSTS == set(), "review these hosts in the new Swagger UI"


def test_console_and_everything_it_loads_reference_no_other_host(client):
    pages = served_files(client, ["/console/"])
    expected = {"/console/console.css", "/console/js/main.js", "/console/js/api.js", "/favicon.svg"}
    assert expected <= set(pages)
    assert len([path for path in pages if path.endswith(".js")]) >= 8, "imports not followed"
    for path, text in pages.items():
        assert external_urls(text) == [], f"{path} references another host"


def test_error_answers_and_the_favicon_reference_no_other_host(client):
    for path in ("/no-such-page", "/favicon.ico", "/docs/assets/missing.js", "/redoc"):
        response = client.get(path, follow_redirects=False)
        assert external_urls(response.text) == [], path
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg+xml")
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "/docs"
