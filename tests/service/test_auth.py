"""Optional API keys: off by default; when set, every route but probes, the scrape and the docs
answers 401 `unauthorized` without a valid key, before reading the body and without touching
the gallery."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.api.auth import OPEN_PATHS
from service.settings import Settings

KEY = "k3y-for-tests-0123456789"
OTHER_KEY = "another-key-abcdefghijkl"


@pytest.fixture
def pack(tmp_path):
    return make_manifest_pack(
        tmp_path / "pack", [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)]
    )


def photo_files() -> dict:
    data = encode(noise_image(640, seed=3), ".png")
    return {"image1": ("a.png", data, "image/png"), "image2": ("b.png", data, "image/png")}


def test_without_keys_nothing_is_checked(app_client, pack):
    with app_client(pack) as client:
        assert client.get("/identities").status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_a_request_without_a_key_gets_401_unauthorized_with_a_challenge(app_client, pack):
    with app_client(pack, api_keys=KEY) as client:
        response = client.post("/verify", files=photo_files())
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert "X-API-Key" in response.json()["error"]["message"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get("/identities").status_code == 401


def test_a_wrong_key_is_refused_and_a_right_one_in_either_header_is_accepted(app_client, pack):
    with app_client(pack, api_keys=f"{KEY}, {OTHER_KEY}") as client:
        wrong = client.get("/identities", headers={"X-API-Key": KEY[:-1] + "?"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
        assert client.get("/identities", headers={"X-API-Key": KEY}).status_code == 200
        bearer = {"Authorization": f"Bearer {OTHER_KEY}"}
        assert client.get("/identities", headers=bearer).status_code == 200
        basic = {"Authorization": f"Basic {OTHER_KEY}"}
        assert client.get("/identities", headers=basic).status_code == 401
        verify = client.post("/verify", files=photo_files(), headers={"X-API-Key": KEY})
        assert verify.status_code == 200, verify.text


def test_a_body_over_the_request_limit_is_refused_for_its_key_first(app_client, pack):
    """Without a key: 401, although the body is over the request limit (it is never read);
    with the key the same body meets the body-size limit."""
    with app_client(pack, api_keys=KEY, max_upload_bytes=1000) as client:
        big = {"image1": ("a.png", b"x" * 200_000, "image/png")}
        assert client.post("/verify", files=big).status_code == 401
        with_key = client.post("/verify", files=big, headers={"X-API-Key": KEY})
        assert with_key.status_code == 413
        assert with_key.json()["error"]["code"] == "payload_too_large"


def test_probes_scrape_and_docs_need_no_key(app_client, pack):
    with app_client(pack, api_keys=KEY) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert path in OPEN_PATHS
            assert client.get(path).status_code == 200, path


def test_a_refused_request_changes_nothing_and_is_counted(app_client, pack):
    with app_client(pack, api_keys=KEY) as client:
        created = client.post("/identities", json={"name": "intruder"})
        assert created.status_code == 401
        listing = client.get("/identities", headers={"X-API-Key": KEY}).json()
        assert listing["total"] == 0
        metrics = client.get("/metrics").text
    assert 'faceverify_errors_total{code="unauthorized"} 1.0' in metrics
    assert 'method="POST",route="unmatched",status="401"} 1.0' in metrics


def test_openapi_declares_the_keys_on_protected_operations_only(app_client, pack):
    with app_client(pack, api_keys=KEY) as client:
        spec = client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert spec["paths"]["/verify"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "401" in spec["paths"]["/identities"]["get"]["responses"]
    assert "security" not in spec["paths"]["/readyz"]["get"]


@pytest.mark.parametrize("value", ["short", f"{KEY},", f"{KEY},tiny"])
def test_short_or_empty_keys_are_refused_at_start_up(value, tmp_path):
    with pytest.raises(ValidationError):
        Settings(pack_dir=tmp_path, api_keys=value, _env_file=None)


def test_keys_never_appear_in_the_settings_repr(tmp_path):
    settings = Settings(pack_dir=tmp_path, api_keys=KEY, _env_file=None)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    assert settings.api_key_list() == (KEY,)


def test_docs_assets_and_favicon_need_no_key_but_paths_under_them_reach_no_route(app_client, pack):
    """Swagger UI's files load without a key (the docs must render before one is given);
    a path that only starts like them cannot reach a protected route."""
    with app_client(pack, api_keys=KEY) as client:
        for path in ("/docs/assets/swagger-ui.css", "/favicon.ico", "/redoc"):
            assert client.get(path, follow_redirects=False).status_code in (200, 307), path
        for path in ("/docs/../identities", "/docs/assets/../../identities", "/docs/%2e%2e/verify"):
            response = client.get(path)  # 401 once normalised, 404 if sent as it is
            assert response.status_code in (401, 404), path
            assert "items" not in response.text
