"""Request middleware: metric labels from closed sets, security headers on every answer
and request-body limits by content type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from synthetic_models import SyntheticFace, make_manifest_pack

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)
KEY = "k" * 32


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE])


def _method_labels(metrics_text: str) -> set[str]:
    return set(re.findall(r'faceverify_requests_total\{method="([^"]*)"', metrics_text))


@pytest.mark.parametrize("keys_on", [False, True], ids=["open", "with_api_keys"])
def test_invented_methods_count_as_other_and_metrics_stay_small(app_client, pack, keys_on):
    overrides = {"api_keys": KEY} if keys_on else {}
    with app_client(pack, **overrides) as client:
        before = len(client.get("/metrics").content)
        for i in range(300):
            client.request(f"X{i:04d}" + "M" * 2000, "/verify")
        client.request("GET", "/healthz")
        text = client.get("/metrics").text
    assert _method_labels(text) <= {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "other",
    }
    assert "other" in _method_labels(text)
    # 300 invented methods add one series, not 300 (a few KB at most, not megabytes).
    assert len(text.encode()) < before + 20_000


def test_api_answers_are_not_cached_or_sniffed(app_client, pack):
    with app_client(pack) as client:
        client.post("/identities", json={"name": "Employee 1001"})
        answers = [
            client.get("/identities"),
            client.get("/healthz"),
            client.get("/identities/unknown"),  # an error answer
            client.post("/identities", json={}),
        ]
        scrape = client.get("/metrics")
    for response in answers:
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert response.headers["x-content-type-options"] == "nosniff"
    assert scrape.headers["x-content-type-options"] == "nosniff"


def test_the_docs_cannot_be_framed(app_client, pack):
    with app_client(pack) as client:
        for path in ("/docs", "/docs/oauth2-redirect"):
            response = client.get(path)
            assert response.status_code == 200
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"


def test_the_console_keeps_its_own_headers(app_client, pack):
    from service.web.console import SECURITY_HEADERS

    with app_client(pack) as client:
        response = client.get("/console/")
    assert response.status_code == 200
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
