"""How the service serves the console (no browser): where it lives, its security headers, the
switch that turns it off, and GET /status that its Status page reads."""

from __future__ import annotations

import pytest
from synthetic_models import make_manifest_pack

from service import __version__

KEY = "k" * 32


@pytest.fixture
def pack(tmp_path):
    return make_manifest_pack(tmp_path / "pack", threshold=0.42)


def test_root_and_console_redirect_to_the_console_page(app_client, pack):
    with app_client(pack) as client:
        for path in ("/", "/console"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 307
            assert response.headers["location"] == "/console/"
        page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in page.text


def test_console_files_forbid_loading_from_other_hosts(app_client, pack):
    with app_client(pack) as client:
        for path in ("/console/", "/console/js/main.js", "/console/console.css"):
            response = client.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "connect-src 'self'" in policy
            assert response.headers["x-content-type-options"] == "nosniff"
        script = client.get("/console/js/api.js")
    assert "javascript" in script.headers["content-type"]  # ES modules need a script type


def test_console_false_serves_no_console(app_client, pack):
    with app_client(pack, console=False) as client:
        for path in ("/", "/console", "/console/", "/console/js/main.js"):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        assert client.get("/docs").status_code == 200


def test_console_files_need_no_key_but_the_api_behind_them_does(app_client, pack):
    with app_client(pack, api_keys=KEY) as client:
        assert client.get("/").status_code == 200  # followed to /console/
        assert client.get("/console/js/main.js").status_code == 200
        assert client.get("/status").status_code == 401
        assert client.get("/console/../status").status_code == 401
        assert client.get("/status", headers={"X-API-Key": KEY}).json()["api_keys"] is True


def test_status_reports_pack_runtime_threshold_index_and_gallery_counts(app_client, pack):
    with app_client(pack, max_upload_bytes=123_456) as client:
        first = client.get("/status").json()
        identity = client.post("/identities", json={"name": "Ada"}).json()
        client.post("/identities", json={"name": "Grace"})
        second = client.get("/status").json()
        spec = client.get("/openapi.json").json()
    assert first["gallery"] == {"identities": 0, "faces": 0}
    assert second["gallery"] == {"identities": 2, "faces": 0}
    assert identity["name"] == "Ada"
    assert second["model"].startswith("synthetic@")
    assert second["pack"] == "synthetic"
    assert second["embedding_size"] == 8
    assert second["threshold"] == second["pack_threshold"] == 0.42
    assert second["provider"] == "CPUExecutionProvider"
    assert second["index"] == {"type": "flat", "device": "cpu", "size": 0}
    assert second["max_upload_bytes"] == 123_456
    assert second["api_keys"] is False
    assert second["version"] == __version__
    assert second["detector"] and second["recognizer"]
    assert "/status" in spec["paths"]


def test_status_shows_the_configured_threshold_over_the_packs(app_client, pack):
    with app_client(pack, threshold=0.3) as client:
        status = client.get("/status").json()
    assert status["threshold"] == 0.3 and status["pack_threshold"] == 0.42
