"""Hashed, scoped keys: every route refuses keys without its scope (403 `forbidden`, before
the body is read), keys are compared in constant time, stored hashed, and revocations reach
running workers without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.api.auth import OPEN_PATHS, ROUTE_SCOPES
from service.app import create_app
from service.keys import (
    SCOPES,
    KeyRing,
    KeysFileError,
    create_key,
    find_key,
    read_keys_file,
    revoke_key,
)
from service.settings import Settings

ENV_KEY = "env-key-for-tests-0123456789"


@pytest.fixture
def pack(tmp_path):
    return make_manifest_pack(
        tmp_path / "pack", [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)]
    )


@pytest.fixture
def keys_file(tmp_path):
    """One key per scope, named after it; returns (path, {scope: secret})."""
    path = tmp_path / "keys.json"
    secrets = {scope: create_key(path, scope, [scope])[1] for scope in SCOPES}
    return path, secrets


def _routes(app) -> list[tuple[str, str]]:
    """Every operation the app publishes but the open ones, as (METHOD, path template)."""
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path not in OPEN_PATHS
        for method in operations
    )


def _concrete(path: str) -> str:
    return path.replace("{identity_id}", "nobody").replace("{face_id}", "noface")


def test_every_route_has_a_scope_in_the_table(tmp_path):
    routes = _routes(create_app(Settings(pack_dir=tmp_path, _env_file=None)))
    assert routes and set(routes) == set(ROUTE_SCOPES)


def test_every_route_refuses_every_key_without_its_scope(app_client, pack, keys_file):
    path, secrets = keys_file
    with app_client(pack, api_keys_file=path) as client:
        routes = _routes(client.app)
        for method, route in routes:
            needed = ROUTE_SCOPES[(method, route)]
            for scope, secret in secrets.items():
                response = client.request(method, _concrete(route), headers={"X-API-Key": secret})
                allowed = scope in (needed, "admin")
                assert response.status_code != 401, (method, route, scope)
                if allowed:
                    assert response.status_code not in (401, 403), (method, route, scope)
                else:
                    assert response.status_code == 403, (method, route, scope)
                    error = response.json()["error"]
                    assert error["code"] == "forbidden"
                    assert needed in error["message"] and scope in error["message"]


def test_paths_outside_the_table_need_admin(app_client, pack, keys_file):
    path, secrets = keys_file
    with app_client(pack, api_keys_file=path) as client:
        unknown = client.get("/no-such-route", headers={"X-API-Key": secrets["verify"]})
        assert unknown.status_code == 403
        admin = client.get("/no-such-route", headers={"X-API-Key": secrets["admin"]})
        assert admin.status_code == 404


def test_a_key_without_the_scope_is_refused_before_its_body_is_read(app_client, pack, keys_file):
    """A body over the upload limit: 403 for a key without `verify` (the body is never read),
    413 for the key that holds it."""
    path, secrets = keys_file
    with app_client(pack, api_keys_file=path, max_upload_bytes=1000) as client:
        big = {"image1": ("a.png", b"x" * 200_000, "image/png")}
        refused = client.post("/verify", files=big, headers={"X-API-Key": secrets["identify"]})
        assert refused.status_code == 403
        allowed = client.post("/verify", files=big, headers={"X-API-Key": secrets["verify"]})
        assert allowed.status_code == 413


def test_env_keys_keep_working_with_every_scope_beside_the_file(app_client, pack, keys_file):
    path, secrets = keys_file
    with app_client(pack, api_keys=ENV_KEY, api_keys_file=path) as client:
        headers = {"X-API-Key": ENV_KEY}
        created = client.post("/identities", json={"name": "a"}, headers=headers)
        assert created.status_code == 201
        assert client.get("/identities", headers=headers).status_code == 200
        photo = {"image": ("a.png", encode(noise_image(640, seed=3), ".png"), "image/png")}
        assert client.post("/embed", files=photo, headers=headers).status_code == 200
        reader = {"X-API-Key": secrets["gallery:read"]}
        assert client.get("/identities", headers=reader).json()["total"] == 1


def test_the_keys_file_holds_digests_never_secrets(keys_file):
    path, secrets = keys_file
    text = path.read_text()
    assert all(secret not in text for secret in secrets.values())
    assert all(key.hash.startswith("sha256:") for key in read_keys_file(path))
    assert path.stat().st_mode & 0o077 == 0


def test_comparison_looks_at_every_key_whatever_matches(keys_file, monkeypatch):
    """Constant-time: one compare_digest per stored key for the first, the last and an
    unknown key alike (no early exit that would time which record matched)."""
    path, secrets = keys_file
    keys = read_keys_file(path)
    calls = []
    import service.keys as keys_module

    real = keys_module.hmac.compare_digest
    monkeypatch.setattr(
        keys_module.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b)
    )
    for presented in (secrets["verify"], secrets["admin"], "fv_not-a-key"):
        calls.clear()
        found = find_key(presented, keys)
        assert len(calls) == len(keys)
        assert (found is None) == (presented == "fv_not-a-key")


def test_revoked_and_new_keys_reach_a_running_service_within_a_second(app_client, pack, tmp_path):
    path = tmp_path / "keys.json"
    _, first = create_key(path, "first", ["gallery:read"])
    with app_client(pack, api_keys_file=path) as client:
        assert client.get("/identities", headers={"X-API-Key": first}).status_code == 200
        revoke_key(path, "first")
        _, second = create_key(path, "second", ["gallery:read"])
        time.sleep(1.1)  # service.keys.RELOAD_INTERVAL_S
        refused = client.get("/identities", headers={"X-API-Key": first})
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
        assert client.get("/identities", headers={"X-API-Key": second}).status_code == 200


def test_a_broken_keys_file_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys.json"
    _, secret = create_key(path, "app", ["verify"])
    ring = KeyRing(path=path, reload_interval_s=0.0)
    assert ring.authenticate(secret).name == "app"
    path.write_text("{ not json")
    assert ring.authenticate(secret).name == "app"


def test_a_missing_or_invalid_keys_file_stops_start_up(tmp_path):
    with pytest.raises(KeysFileError, match="keys create"):
        KeyRing(path=tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": [{"name": "x", "hash": "plain", "scopes": ["verify"]}]}')
    with pytest.raises(KeysFileError, match="record 0"):
        KeyRing(path=bad)


def test_openapi_names_the_scope_of_each_operation(app_client, pack, keys_file):
    path, _ = keys_file
    with app_client(pack, api_keys_file=path) as client:
        spec = client.get("/openapi.json").json()
    assert spec["paths"]["/identify"]["post"]["x-required-scope"] == "identify"
    assert "403" in spec["paths"]["/identities"]["post"]["responses"]


# --- what each scope may learn from answers ----------------------------------------------

THRESHOLD = 0.5


@pytest.fixture
def gallery_pack(tmp_path):
    """32-d embeddings: photos of different seeds are strangers, mostly far below 0.5."""
    return make_manifest_pack(
        tmp_path / "gallery-pack",
        [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)],
        embedding_size=32,
        threshold=THRESHOLD,
    )


def _photo(seed: int) -> dict:
    return {"image": ("a.png", encode(noise_image(640, seed=seed), ".png"), "image/png")}


def _enrol_people(client, admin: dict, seeds: range) -> dict[int, str]:
    ids = {}
    for seed in seeds:
        identity = client.post("/identities", json={"name": f"person {seed}"}, headers=admin)
        ids[seed] = identity.json()["id"]
        enrolled = client.post(f"/identities/{ids[seed]}/faces", files=_photo(seed), headers=admin)
        assert enrolled.status_code == 201, enrolled.text
    return ids


def test_identify_key_sees_candidates_only_from_the_floor_and_a_reader_sees_them_all(
    app_client, gallery_pack, keys_file
):
    path, secrets = keys_file
    _, reader_secret = create_key(path, "identify-and-read", ["identify", "gallery:read"])
    admin, narrow = {"X-API-Key": secrets["admin"]}, {"X-API-Key": secrets["identify"]}
    reader = {"X-API-Key": reader_secret}
    with app_client(gallery_pack, api_keys_file=path) as client:
        ids = _enrol_people(client, admin, range(1, 11))
        stranger = {"top_k": "100", "threshold": "-1"}  # a client's own threshold: no effect
        seen_by = {
            name: client.post("/identify", files=_photo(99), data=stranger, headers=headers)
            for name, headers in (("narrow", narrow), ("reader", reader), ("admin", admin))
        }
        known = client.post("/identify", files=_photo(3), data={"top_k": "100"}, headers=narrow)
    everyone = seen_by["reader"].json()["results"][0]["candidates"]
    assert len(everyone) == 10  # the premise: the gallery answers with every identity
    assert any(c["similarity"] < THRESHOLD for c in everyone)
    assert seen_by["admin"].json()["results"][0]["candidates"] == everyone
    [result] = seen_by["narrow"].json()["results"]
    above = [c for c in everyone if c["similarity"] >= THRESHOLD]
    assert result["candidates"] == above
    assert result["identity"] == (
        {"id": above[0]["identity_id"], "name": above[0]["name"]} if above else None
    )
    [found] = known.json()["results"]
    assert found["identity"] == {"id": ids[3], "name": "person 3"}
    assert all(c["similarity"] >= THRESHOLD for c in found["candidates"])


def test_identify_candidate_floor_is_a_setting(app_client, gallery_pack, keys_file):
    path, secrets = keys_file
    admin, narrow = {"X-API-Key": secrets["admin"]}, {"X-API-Key": secrets["identify"]}
    with app_client(gallery_pack, api_keys_file=path, identify_candidate_floor=-1.0) as client:
        _enrol_people(client, admin, range(1, 6))
        body = client.post("/identify", files=_photo(99), data={"top_k": "100"}, headers=narrow)
    assert len(body.json()["results"][0]["candidates"]) == 5


def test_verify_key_gets_the_similarity_but_not_the_name_or_face_id(
    app_client, gallery_pack, keys_file
):
    path, secrets = keys_file
    admin, narrow = {"X-API-Key": secrets["admin"]}, {"X-API-Key": secrets["verify"]}
    with app_client(gallery_pack, api_keys_file=path) as client:
        ids = _enrol_people(client, admin, range(1, 2))
        form = {"identity_id": ids[1]}
        hidden = client.post("/verify", files=_photo(1), data=form, headers=narrow)
        shown = client.post("/verify", files=_photo(1), data=form, headers=admin)
        assert client.get(f"/identities/{ids[1]}", headers=narrow).status_code == 403
    assert hidden.status_code == 200 and hidden.json()["match"] is True
    assert hidden.json()["identity"] is None and hidden.json()["face_id"] is None
    assert "person 1" not in hidden.text
    assert shown.json()["identity"] == {"id": ids[1], "name": "person 1"}
    assert shown.json()["face_id"]


def test_status_says_keys_are_on_when_only_a_keys_file_enforces_them(app_client, pack, keys_file):
    path, secrets = keys_file
    with app_client(pack, api_keys_file=path) as client:
        body = client.get("/status", headers={"X-API-Key": secrets["gallery:read"]}).json()
    assert body["api_keys"] is True
    with app_client(pack) as client:
        assert client.get("/status").json()["api_keys"] is False


def test_open_metrics_scrape_hides_gallery_counts_when_keys_are_on(app_client, pack, keys_file):
    path, secrets = keys_file
    admin = {"X-API-Key": secrets["admin"]}
    with app_client(pack, api_keys_file=path) as client:
        client.post("/identities", json={"name": "a"}, headers=admin)
        hidden = client.get("/metrics").text
        counted = client.get("/status", headers=admin).json()["gallery"]
    assert "faceverify_gallery_identities" not in hidden
    assert "faceverify_gallery_faces" not in hidden
    assert "admin" not in hidden  # no key name either
    assert 'faceverify_gallery_changes_total{action="identity_create"} 1.0' in hidden
    assert counted["identities"] == 1  # still there for a gallery:read key
    with app_client(pack, api_keys_file=path, metrics_gallery_counts=True) as client:
        assert "faceverify_gallery_identities 1.0" in client.get("/metrics").text
    with app_client(pack) as client:  # without keys /status is open too: nothing to hide
        assert "faceverify_gallery_identities 1.0" in client.get("/metrics").text


def test_the_multi_worker_scrape_hides_gallery_counts_too(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR (several workers) the aggregated scrape is filtered the
    same way; prometheus_client picks its mode at import, hence a fresh interpreter."""
    script = (
        "from service.metrics import Metrics\n"
        "m = Metrics.create(); m.gallery_identities.set(3); m.gallery_faces.set(5)\n"
        "m.gallery_changes.labels('face_add').inc(); m.gallery_counts_exported = False\n"
        "print(m.render()[0].decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("*.db"))  # the multi-process collector was in use
    assert 'faceverify_gallery_changes_total{action="face_add"} 1.0' in done.stdout
    assert "faceverify_gallery_identities" not in done.stdout
    assert "faceverify_gallery_faces" not in done.stdout
