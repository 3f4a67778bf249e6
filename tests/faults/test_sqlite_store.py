"""Faults of the embedded gallery's SQLite database under `python -m service`: deleted while it
runs, emptied while it is stopped, locked by another writer, on a full disk, in a read-only
folder. Each scenario checks what a client sees (status, stable code, Retry-After), what
/readyz says, recovery without a restart, and that every acknowledged write is still there
after a restart. The server is the synthetic pack on 127.0.0.1, ended by its process group."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from store_support import (
    IS_ROOT,
    Server,
    assert_refused,
    backup_copy,
    fill_disk,
    held_write_lock,
    photo_upload,
    readiness,
    remount,
    running_server,
    small_tmpfs,
    storage_errors,
    wait_exit,
)
from synthetic_models import SyntheticFace, make_manifest_pack

from service.app import create_app
from service.gallery.store import SqliteStore
from service.gallery.store_files import DATABASE_NAME, MARKER_NAME
from service.settings import Settings

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
EMBEDDING_SIZE = 32
# A busy timeout short enough to keep the scenario quick; the default is 5 s.
BUSY_TIMEOUT_S = 0.5
NEEDS_ROOT = "mounting a tmpfs needs root (CI runs the suite as root)"


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)


def enrol(client: httpx.Client, identity_id: str, seed: int) -> httpx.Response:
    return client.post(f"/identities/{identity_id}/faces", files=photo_upload(seed))


class Acknowledged:
    """Every write the service answered 2xx, to look for after a restart."""

    def __init__(self) -> None:
        self.identities: set[str] = set()
        self.faces: dict[str, str] = {}  # face_id -> identity_id

    def identity(self, client: httpx.Client, name: str) -> str:
        response = client.post("/identities", json={"name": name})
        assert response.status_code == 201, response.text
        self.identities.add(response.json()["id"])
        return response.json()["id"]

    def face(self, client: httpx.Client, identity_id: str, seed: int) -> str:
        response = enrol(client, identity_id, seed)
        assert response.status_code == 201, response.text
        self.faces[response.json()["face_id"]] = identity_id
        return response.json()["face_id"]

    def assert_all_stored(self, pack: Path, data_dir: Path) -> None:
        """Restart the service on `data_dir` and find every acknowledged identity and face."""
        with (
            running_server(pack, data_dir) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            for identity_id in self.identities:
                response = client.get(f"/identities/{identity_id}")
                assert response.status_code == 200, response.text
                stored = {face["face_id"] for face in response.json()["faces"]}
                mine = {f for f, owner in self.faces.items() if owner == identity_id}
                assert mine <= stored, (identity_id, mine - stored)


def test_database_deleted_under_the_running_service_refuses_writes_until_it_is_put_back(
    tmp_path, pack
):
    # Before: with gallery.sqlite3* removed, enrolments got 201 into the unlinked file and
    # /readyz stayed 200; after a restart the gallery was empty.
    data_dir, saved = tmp_path / "data", Acknowledged()
    with (
        running_server(pack, data_dir) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        ada = saved.identity(client, "Ada")
        for seed in range(3):
            saved.face(client, ada, seed)
        backup_copy(data_dir, tmp_path / "backup.sqlite3")  # taken after the last write
        for path in data_dir.glob(f"{DATABASE_NAME}*"):
            path.unlink()

        message = assert_refused(enrol(client, ada, 10), 503, "gallery_unavailable")
        assert "gone" in message
        assert_refused(client.post("/identities", json={"name": "Bo"}), 503, "gallery_unavailable")
        assert_refused(client.delete(f"/identities/{ada}"), 503, "gallery_unavailable")
        status, reason = readiness(client, ready=False)
        assert status == 503 and "gone" in reason, reason
        assert storage_errors(client, "gone") >= 3
        assert not (data_dir / DATABASE_NAME).exists()  # no new empty database either

        # Put back: the service adopts the copy (this gallery, every write) without a restart.
        shutil.copyfile(tmp_path / "backup.sqlite3", data_dir / DATABASE_NAME)
        assert readiness(client, ready=True) == (200, "")
        saved.face(client, ada, 11)
        assert {f["face_id"] for f in client.get(f"/identities/{ada}").json()["faces"]} == set(
            saved.faces
        )
    saved.assert_all_stored(pack, data_dir)


def test_a_stale_copy_put_back_is_not_adopted(tmp_path, pack):
    # A backup that lacks acknowledged writes must not silently become the gallery.
    data_dir, saved = tmp_path / "data", Acknowledged()
    with (
        running_server(pack, data_dir) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        ada = saved.identity(client, "Ada")
        backup_copy(data_dir, tmp_path / "stale.sqlite3")
        saved.face(client, ada, 0)  # not in the copy
        for path in data_dir.glob(f"{DATABASE_NAME}*"):
            path.unlink()
        shutil.copyfile(tmp_path / "stale.sqlite3", data_dir / DATABASE_NAME)
        message = assert_refused(enrol(client, ada, 1), 503, "gallery_unavailable")
        assert "replaced" in message and "lacks the last 1" in message, message
        status, reason = readiness(client, ready=False)
        assert status == 503 and "replaced" in reason


def test_database_emptied_while_stopped_refuses_start_up_unless_told_to_start_fresh(tmp_path, pack):
    # Before: a database truncated to 0 bytes while stopped started as an empty gallery.
    data_dir = tmp_path / "data"
    store = SqliteStore.in_directory(data_dir)  # a previous run's data
    store.create_identity("Ada", {})
    store.close()
    os.truncate(data_dir / DATABASE_NAME, 0)

    refused = Server(pack, data_dir)
    try:
        assert wait_exit(refused.process, 60) != 0
        output = refused.output()
    finally:
        refused.stop()
    [line] = [line for line in output.splitlines() if line.startswith("faceverify:")]
    assert "empty (0 bytes)" in line and MARKER_NAME in line, output
    assert "FACEVERIFY_GALLERY_ALLOW_EMPTY" in line
    assert (data_dir / DATABASE_NAME).stat().st_size == 0  # left as found, for the operator

    with (
        running_server(pack, data_dir, gallery_allow_empty="true") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/identities").json()["total"] == 0


def test_database_locked_by_another_writer_answers_storage_busy_and_recovers(tmp_path, pack):
    # Before: 500 internal_error after the 30 s busy timeout.
    data_dir, saved = tmp_path / "data", Acknowledged()
    with (
        running_server(pack, data_dir, gallery_busy_timeout_s=BUSY_TIMEOUT_S) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        ada = saved.identity(client, "Ada")
        saved.face(client, ada, 0)
        with held_write_lock(data_dir / DATABASE_NAME):
            started = time.monotonic()
            message = assert_refused(enrol(client, ada, 1), 503, "storage_busy")
            assert time.monotonic() - started < BUSY_TIMEOUT_S + 5
            assert "lock" in message
            assert_refused(client.post("/identities", json={"name": "Bo"}), 503, "storage_busy")
            assert_refused(
                client.patch(f"/identities/{ada}", json={"name": "Ada L."}), 503, "storage_busy"
            )
            assert client.get(f"/identities/{ada}").status_code == 200  # reads go on
            status, reason = readiness(client, ready=False)
            assert status == 503 and "lock" in reason, reason
            assert storage_errors(client, "busy") >= 3
        assert readiness(client, ready=True) == (200, "")
        saved.face(client, ada, 2)
    saved.assert_all_stored(pack, data_dir)


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_disk_full_answers_insufficient_storage_and_recovers_when_space_is_freed(tmp_path, pack):
    # Before: POST /identities, enrolment and DELETE answered 500 internal_error.
    with small_tmpfs("8m", tmp_path) as disk:
        data_dir, saved = disk / "data", Acknowledged()
        with (
            running_server(pack, data_dir) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            ada = saved.identity(client, "Ada")
            saved.face(client, ada, 0)
            bo = saved.identity(client, "Bo")
            filler = fill_disk(disk)

            def refused(response: httpx.Response) -> None:
                message = assert_refused(response, 507, "insufficient_storage", retry_after=False)
                assert "full" in message

            refused(client.post("/identities", json={"name": "Cy"}))
            refused(enrol(client, ada, 1))
            refused(client.patch(f"/identities/{ada}", json={"name": "Ada L."}))
            refused(client.delete(f"/identities/{bo}"))
            assert client.get(f"/identities/{ada}").json()["faces"]  # data intact, readable
            status, reason = readiness(client, ready=False)
            assert status == 503 and "full" in reason, reason
            assert storage_errors(client, "full") >= 4

            filler.unlink()
            assert readiness(client, ready=True) == (200, "")
            saved.face(client, ada, 2)
            assert client.delete(f"/identities/{bo}").status_code == 204
            saved.identities.discard(bo)
        saved.assert_all_stored(pack, data_dir)


@pytest.mark.skipif(not IS_ROOT, reason=NEEDS_ROOT)
def test_read_only_data_dir_at_start_up_exits_non_zero_saying_read_only(tmp_path, pack):
    # Before: the service started and answered 503 forever, "unable to open database file".
    with small_tmpfs("4m", tmp_path) as disk:
        data_dir = disk / "data"
        store = SqliteStore.in_directory(data_dir)
        ada = store.create_identity("Ada", {})
        store.close()
        remount(disk, "ro")
        try:
            refused = Server(pack, data_dir)
            try:
                assert wait_exit(refused.process, 60) != 0
                output = refused.output()
            finally:
                refused.stop()
        finally:
            remount(disk, "rw")
        [line] = [line for line in output.splitlines() if line.startswith("faceverify:")]
        assert "read-only" in line and str(data_dir) in line, output
        store = SqliteStore.in_directory(data_dir)
        assert store.get_identity(ada.id) is not None
        store.close()


def test_readyz_says_why_the_gallery_was_not_opened(tmp_path, pack):
    # An app started without `python -m service` (e.g. uvicorn directly) stays up and says why.
    store = SqliteStore.in_directory(tmp_path / "data")
    store.create_identity("Ada", {})
    store.close()
    os.truncate(tmp_path / "data" / DATABASE_NAME, 0)
    settings = Settings(
        pack_dir=pack, data_dir=tmp_path / "data", enrol_quality="off", _env_file=None
    )
    with TestClient(create_app(settings, load_in_background=True)) as client:
        deadline = time.monotonic() + 30
        while (answer := client.get("/readyz")).json()["error"]["code"] == "not_ready" and (
            "start-up failed" not in answer.text
        ):
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        assert answer.status_code == 503
        assert "empty (0 bytes)" in answer.json()["error"]["message"]
