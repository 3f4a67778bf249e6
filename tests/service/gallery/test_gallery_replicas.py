"""Replicas sharing one Milvus gallery: two `python -m service` processes (each with its own
data folder, as on two hosts) on one milvus-lite server. An enrolment through one is found
through the other at its next request, a delete through one is gone from the other, and a
replica killed with SIGKILL while enrolling loses no face it acknowledged."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gallery_support import (
    Server,
    backend_settings,
    enrol_until_killed,
    noise_photo,
    running_server,
)
from synthetic_models import SyntheticFace, make_manifest_pack

pytestmark = pytest.mark.slow

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
EMBEDDING_SIZE = 32
ENROLMENTS_BEFORE_KILL = 15


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)


@pytest.fixture
def shared(tmp_path: Path, milvus_uri: str) -> dict[str, str]:
    """Settings of one Milvus gallery, for every replica of a test."""
    return backend_settings("milvus", tmp_path / "gallery", milvus_uri)


def files(seed: int) -> dict:
    return {"image": ("p.png", noise_photo(seed), "image/png")}


def identified(client: httpx.Client, seed: int) -> str | None:
    response = client.post("/identify", files=files(seed), data={"top_k": "10"})
    assert response.status_code == 200, response.text
    return (response.json()["results"][0]["identity"] or {}).get("id")


def test_replicas_see_each_others_enrolments_and_deletions_at_the_next_request(
    tmp_path, pack, shared
):
    with (
        running_server(pack, tmp_path / "a", **shared) as first,
        running_server(pack, tmp_path / "b", **shared) as second,
        httpx.Client(base_url=first.url, timeout=30) as via_first,
        httpx.Client(base_url=second.url, timeout=30) as via_second,
    ):
        ada = via_first.post("/identities", json={"name": "Ada"}).json()["id"]
        assert via_second.get(f"/identities/{ada}").json()["name"] == "Ada"
        face = via_first.post(f"/identities/{ada}/faces", files=files(1))
        assert face.status_code == 201
        assert identified(via_second, 1) == ada  # the very next request
        bob = via_second.post("/identities", json={"name": "Bob"}).json()["id"]
        assert via_second.post(f"/identities/{bob}/faces", files=files(2)).status_code == 201
        assert identified(via_first, 2) == bob

        assert via_first.delete(f"/identities/{ada}").status_code == 204
        assert identified(via_second, 1) is None
        candidates = via_second.post("/identify", files=files(1), data={"top_k": "10"}).json()
        assert ada not in {c["identity_id"] for c in candidates["results"][0]["candidates"]}
        assert via_second.get(f"/identities/{ada}").status_code == 404
        assert via_second.get("/identities").json()["total"] == 1


def test_replica_killed_during_enrolments_loses_no_acknowledged_face(tmp_path, pack, shared):
    server = Server(pack, tmp_path / "doomed", **shared)
    identity_id, acknowledged = enrol_until_killed(server, ENROLMENTS_BEFORE_KILL)
    assert len(acknowledged) >= ENROLMENTS_BEFORE_KILL

    with (
        running_server(pack, tmp_path / "survivor", **shared) as survivor,
        httpx.Client(base_url=survivor.url, timeout=30) as client,
    ):
        stored = {f["face_id"] for f in client.get(f"/identities/{identity_id}").json()["faces"]}
        sample = list(acknowledged.items())[:: max(1, len(acknowledged) // 5)]
        for face_id, seed in sample:
            [result] = client.post("/identify", files=files(seed)).json()["results"]
            assert result["identity"]["id"] == identity_id
            assert result["candidates"][0]["face_id"] == face_id
    assert set(acknowledged) <= stored
    assert len(stored - set(acknowledged)) <= 2  # in flight at the kill, one per writer
