"""The gallery across real processes: a SIGKILL in the middle of enrolments loses nothing that
was acknowledged, and several uvicorn workers answer consistently about enrolments and
deletions. The server is `python -m service` on 127.0.0.1 with the synthetic pack."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from gallery_support import Server, enrol_until_killed, noise_photo, running_server
from synthetic_models import SyntheticFace, make_manifest_pack

from service.gallery.gallery import Gallery
from service.gallery.store import SqliteStore
from service.gallery.store_files import DATABASE_NAME

pytestmark = pytest.mark.slow

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
EMBEDDING_SIZE = 32
# Acknowledged enrolments to wait for before the kill: enough that the kill lands in the
# middle of a stream of writes, few enough to keep the test short.
ENROLMENTS_BEFORE_KILL = 20


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)


def photo(seed: int) -> bytes:
    return noise_photo(seed)


def files(seed: int) -> dict:
    return {"image": ("p.png", photo(seed), "image/png")}


def fresh_connection_client(url: str) -> httpx.Client:
    """No keep-alive: every request opens a connection, which any worker may accept."""
    return httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def test_sigkill_during_enrolments_loses_no_acknowledged_face(tmp_path, pack):
    data_dir = tmp_path / "data"
    server = Server(pack, data_dir)
    identity_id, acknowledged = enrol_until_killed(server, ENROLMENTS_BEFORE_KILL)
    assert len(acknowledged) >= ENROLMENTS_BEFORE_KILL

    with running_server(pack, data_dir) as restarted:
        with httpx.Client(base_url=restarted.url, timeout=30) as client:
            stored = client.get(f"/identities/{identity_id}").json()["faces"]
            sample = list(acknowledged.items())[:: max(1, len(acknowledged) // 5)]
            for face_id, seed in sample:
                [result] = client.post("/identify", files=files(seed)).json()["results"]
                assert result["identity"]["id"] == identity_id
                assert result["candidates"][0]["face_id"] == face_id
        model_id = restarted.wait_ready()["model"]
    stored_ids = {face["face_id"] for face in stored}
    assert set(acknowledged) <= stored_ids
    # Only requests in flight at the kill (one per writer) may have committed unanswered.
    assert len(stored_ids - set(acknowledged)) <= 2

    database = sqlite3.connect(data_dir / DATABASE_NAME)
    assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    database.close()
    gallery = Gallery(
        SqliteStore.in_directory(data_dir),
        model_id=model_id,
        dim=EMBEDDING_SIZE,
        use_gpu=False,
        poll_interval_s=None,
    )
    try:
        snapshot = gallery.store.snapshot(model_id)
        np.testing.assert_array_equal(gallery.indexed_ids(), np.sort(snapshot.index_ids))
        assert len(snapshot.index_ids) == len(stored_ids)
    finally:
        gallery.close()


def test_workers_share_enrolments_and_deletions(tmp_path, pack):
    with running_server(pack, tmp_path / "data", workers=2) as server:
        with fresh_connection_client(server.url) as client:
            people = {
                client.post("/identities", json={"name": f"p{i}"}).json()["id"]: range(
                    10 * i, 10 * i + 3
                )
                for i in range(3)
            }
        failures: list[str] = []

        def enrol(identity_id: str, seeds: range) -> None:
            with fresh_connection_client(server.url) as client:
                for seed in seeds:
                    response = client.post(f"/identities/{identity_id}/faces", files=files(seed))
                    if response.status_code != 201:
                        failures.append(response.text)
                    # Visible to whichever worker takes the next connection, at once.
                    for _ in range(2):
                        found = client.post("/identify", files=files(seed))
                        if found.status_code != 200:
                            failures.append(found.text)
                            continue
                        identity = found.json()["results"][0]["identity"] or {}
                        if identity.get("id") != identity_id:
                            failures.append(f"enrolment of {seed} not visible: {found.text}")

        threads = [threading.Thread(target=enrol, args=item) for item in people.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []

        deleted, seeds = next(iter(people.items()))
        with fresh_connection_client(server.url) as client:
            assert client.delete(f"/identities/{deleted}").status_code == 204
            for attempt in range(12):
                found = client.post(
                    "/identify", files=files(seeds[attempt % 3]), data={"top_k": "10"}
                ).json()
                [result] = found["results"]
                assert deleted not in {c["identity_id"] for c in result["candidates"]}
                assert len(result["candidates"]) == 2
            assert client.get("/identities").json()["total"] == 2
