"""Identity routes at their edges: metadata shape limits, JSON content types and body sizes,
and the `Location` of what a 201 created."""

from __future__ import annotations

from pathlib import Path

import pytest
from gallery_support import noise_photo
from synthetic_models import SyntheticFace, make_manifest_pack

from service.api.uploads import MAX_JSON_BODY_BYTES
from service.gallery.records import MAX_METADATA_DEPTH, MAX_METADATA_KEYS

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=32)


def nested(levels: int) -> dict:
    """{"a": [[...]]} whose depth (the object itself counted) is `levels`."""
    value: list = []
    for _ in range(levels - 2):
        value = [value]
    return {"a": value}


def code(response) -> str:
    return response.json()["error"]["code"]


@pytest.mark.parametrize("levels", [MAX_METADATA_DEPTH + 1, 257, 600])
def test_deeply_nested_metadata_is_refused_and_listing_keeps_working(app_client, pack, levels):
    with app_client(pack) as client:
        refused = client.post("/identities", json={"name": "x", "metadata": nested(levels)})
        listing = client.get("/identities")
    assert refused.status_code == 422 and code(refused) == "validation_error"
    assert "nested" in refused.json()["error"]["message"]
    assert listing.status_code == 200 and listing.json()["total"] == 0


def test_metadata_at_the_depth_limit_round_trips(app_client, pack):
    metadata = nested(MAX_METADATA_DEPTH)
    with app_client(pack) as client:
        created = client.post("/identities", json={"name": "x", "metadata": metadata})
        patched = client.patch(
            f"/identities/{created.json()['id']}", json={"metadata": nested(MAX_METADATA_DEPTH + 1)}
        )
    assert created.status_code == 201 and created.json()["metadata"] == metadata
    assert patched.status_code == 422 and code(patched) == "validation_error"


def test_too_many_metadata_keys_are_refused(app_client, pack):
    metadata = {"group": {f"k{i}": i for i in range(MAX_METADATA_KEYS)}}  # one more than allowed
    with app_client(pack) as client:
        response = client.post("/identities", json={"name": "x", "metadata": metadata})
    assert response.status_code == 422 and "keys" in response.json()["error"]["message"]


def test_a_stored_record_too_deep_to_answer_does_not_break_listing(app_client, pack):
    with app_client(pack) as client:
        gallery = client.app.state.services.gallery
        broken = gallery.create_identity("stored before the limit", nested(300))
        fine = client.post("/identities", json={"name": "ok", "metadata": {"a": 1}}).json()
        listing = client.get("/identities")
        one = client.get(f"/identities/{broken.id}")
    assert listing.status_code == 200
    by_id = {item["id"]: item for item in listing.json()["items"]}
    assert by_id[broken.id]["metadata"] is None
    assert by_id[fine["id"]]["metadata"] == {"a": 1}
    assert one.status_code == 200 and one.json()["metadata"] is None


def test_json_route_with_another_content_type_is_415(app_client, pack):
    body = b'{"name": "Ada"}'
    with app_client(pack) as client:
        as_text = client.post("/identities", content=body, headers={"content-type": "text/plain"})
        as_form = client.post("/identities", data={"name": "Ada"})
        as_json = client.post(
            "/identities", content=body, headers={"content-type": "application/json"}
        )
        undeclared = client.post("/identities", content=body)
        patch = client.patch(
            f"/identities/{as_json.json()['id']}",
            content=b'{"name": "B"}',
            headers={"content-type": "text/plain; charset=utf-8"},
        )
    assert as_text.status_code == 415 and code(as_text) == "unsupported_media_type"
    assert as_form.status_code == 415 and code(as_form) == "unsupported_media_type"
    assert patch.status_code == 415 and code(patch) == "unsupported_media_type"
    assert undeclared.status_code == 415 and code(undeclared) == "unsupported_media_type"
    assert as_json.status_code == 201


def test_large_json_body_is_refused_with_the_small_json_limit(app_client, pack):
    big = b'{"name": "x", "metadata": {"a": "' + b"y" * (MAX_JSON_BODY_BYTES + 1) + b'"}}'
    with app_client(pack) as client:
        declared = client.post(
            "/identities", content=big, headers={"content-type": "application/json"}
        )

        def chunks():  # no Content-Length: refused while it streams in
            yield big[: len(big) // 2]
            yield big[len(big) // 2 :]

        streamed = client.post(
            "/identities", content=chunks(), headers={"content-type": "application/json"}
        )
        # A multipart upload of the same size is still accepted by the body limit.
        upload = client.post(
            "/detect", files={"image": ("p.png", noise_photo(1) + b"\0" * len(big), "image/png")}
        )
    assert declared.status_code == 413 and code(declared) == "payload_too_large"
    assert streamed.status_code == 413 and code(streamed) == "payload_too_large"
    assert upload.status_code != 413


def test_created_identity_and_face_have_a_location(app_client, pack):
    with app_client(pack) as client:
        created = client.post("/identities", json={"name": "Ada"})
        identity_id = created.json()["id"]
        enrolled = client.post(
            f"/identities/{identity_id}/faces",
            files={"image": ("p.png", noise_photo(3), "image/png")},
        )
        identity = client.get(created.headers["location"])
        face = client.get(enrolled.headers["location"])
        client.delete(enrolled.headers["location"])
        gone = client.get(enrolled.headers["location"])
    assert created.headers["location"] == f"/identities/{identity_id}"
    assert identity.status_code == 200 and identity.json()["name"] == "Ada"
    face_id = enrolled.json()["face_id"]
    assert enrolled.headers["location"] == f"/identities/{identity_id}/faces/{face_id}"
    assert face.status_code == 200 and face.json()["face_id"] == face_id
    assert gone.status_code == 404 and code(gone) == "not_found"
