"""Cross-site writes: a page of another site cannot make the user's browser change the gallery
(403 `cross_site_request`), while the service's own pages, allow-listed origins and clients
that are not browsers (no `Origin`, no `Sec-Fetch-Site`) keep working."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_models import SyntheticFace, make_manifest_pack

from service.api.origin import parse_allowed_origins

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)
ATTACKER = "https://attacker.example"
# What a browser sends for `fetch(url, {mode: "no-cors", method: "POST", body: form})` made by
# a page of another site.
CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Origin": ATTACKER}


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE])


def photo() -> dict:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", cv2.resize(small, (640, 640)))
    assert ok
    return {"image": ("photo.png", data.tobytes(), "image/png")}


def create_identity(client) -> str:
    response = client.post("/identities", json={"name": "Employee 1001"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_another_sites_page_cannot_enrol_a_face_in_keyless_mode(app_client, pack):
    with app_client(pack) as client:
        identity = create_identity(client)
        refused = client.post(f"/identities/{identity}/faces", files=photo(), headers=CROSS_SITE)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "cross_site_request"
        assert client.get(f"/identities/{identity}").json()["faces"] == []
        # The same upload from a program (no browser headers) still enrols.
        assert client.post(f"/identities/{identity}/faces", files=photo()).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/identities"), ("PATCH", "/identities/x"), ("DELETE", "/identities/x")],
)
def test_every_state_changing_method_from_another_site_is_refused(app_client, pack, method, path):
    with app_client(pack) as client:
        response = client.request(method, path, json={"name": "n"}, headers=CROSS_SITE)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cross_site_request"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": ATTACKER},  # a browser without Fetch Metadata
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost:3000"},
        {"Sec-Fetch-Site": "cross-site"},  # Origin stripped by a privacy extension
    ],
    ids=["origin_only", "null_origin", "same_site", "fetch_site_only"],
)
def test_other_origins_are_refused_with_or_without_fetch_metadata(app_client, pack, headers):
    with app_client(pack) as client:
        response = client.post("/identities", json={"name": "n"}, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cross_site_request"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, SDKs, servers
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},  # the console
        {"Sec-Fetch-Site": "none"},  # typed in by the user
        {"Origin": "http://testserver"},  # a browser without Fetch Metadata, same origin
    ],
    ids=["no_browser", "same_origin", "user_initiated", "own_origin_only"],
)
def test_programs_and_the_services_own_pages_may_write(app_client, pack, headers):
    with app_client(pack) as client:
        response = client.post("/identities", json={"name": "n"}, headers=headers)
    assert response.status_code == 201, response.text


def test_an_allow_listed_origin_may_write_cross_site(app_client, pack):
    app = "https://app.example.com"
    with app_client(pack, allowed_origins=f"{app}/") as client:
        allowed = client.post(
            "/identities",
            json={"name": "n"},
            headers={"Sec-Fetch-Site": "cross-site", "Origin": app},
        )
        other = client.post("/identities", json={"name": "n"}, headers=CROSS_SITE)
    assert allowed.status_code == 201
    assert other.status_code == 403


def test_reads_from_another_site_are_not_refused(app_client, pack):
    """A cross-site page cannot read answers without CORS (never granted), so reads pass."""
    with app_client(pack) as client:
        assert client.get("/identities", headers=CROSS_SITE).status_code == 200


def test_allowed_origins_must_be_origins():
    assert parse_allowed_origins("https://A.example.com/, http://b:8080") == {
        "https://a.example.com",
        "http://b:8080",
    }
    for bad in ("a.example.com", "https://a.example.com/path", "ftp://a"):
        with pytest.raises(ValueError, match="FACEVERIFY_ALLOWED_ORIGINS"):
            parse_allowed_origins(bad)
