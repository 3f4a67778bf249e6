"""The SQLite store: CRUD, durability across reopen, the change log, and verified erasure."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from gallery_support import MODEL, OTHER_MODEL, open_test_gallery, unit

from service.errors import ErrorCode, ServiceError
from service.gallery.interface import NewFace
from service.gallery.store import POOL_IDLE_CONNECTIONS, SqliteStore
from service.gallery.store_files import (
    DATABASE_NAME,
    MARKER_NAME,
    GalleryStoreError,
    check_data_dir,
)
from service.metrics import Metrics


@pytest.fixture
def store(tmp_path: Path):
    opened = SqliteStore.in_directory(tmp_path)
    yield opened
    opened.close()


def _face(identity_id: str, seed: int, model: str = MODEL, dim: int = 16) -> NewFace:
    vector = unit(np.random.default_rng(seed).standard_normal(dim))
    return NewFace(
        identity_id, model, vector, quality=20.0 + seed, det_score=0.9, image_sha256=f"{seed:064x}"
    )


def test_identity_round_trips_name_metadata_and_timestamps(store):
    created = store.create_identity("Ada", {"team": "math", "tags": [1, 2]})
    assert len(created.id) == 32 and int(created.id, 16) >= 0  # uuid4 hex
    loaded = store.get_identity(created.id)
    assert loaded == created
    assert loaded.metadata == {"team": "math", "tags": [1, 2]}
    assert store.get_identity("missing") is None


def test_list_identities_pages_in_creation_order(store):
    ids = [store.create_identity(f"person {i}", {}).id for i in range(7)]
    assert [i.id for i in store.list_identities(3, 0)] == ids[:3]
    assert [i.id for i in store.list_identities(3, 3)] == ids[3:6]
    assert [i.id for i in store.list_identities(3, 6)] == ids[6:]
    assert store.list_identities(3, 9) == []
    assert store.counts() == (7, 0)


def test_update_changes_only_given_fields(store):
    identity = store.create_identity("Ada", {"a": 1})
    renamed = store.update_identity(identity.id, "Ada L.", None)
    assert renamed.name == "Ada L." and renamed.metadata == {"a": 1}
    retagged = store.update_identity(identity.id, None, {"b": 2})
    assert retagged.name == "Ada L." and retagged.metadata == {"b": 2}
    assert retagged.updated_at >= identity.updated_at
    assert store.update_identity("missing", "x", None) is None


def test_face_is_stored_with_its_model_and_embedding(store):
    identity = store.create_identity("Ada", {})
    new = _face(identity.id, 1)
    record = store.add_face(new)
    assert record.model_id == MODEL and record.identity_id == identity.id
    faces, vectors = store.embeddings_of(identity.id, MODEL)
    assert [f.face_id for f in faces] == [record.face_id]
    np.testing.assert_array_equal(vectors[0], new.embedding)
    assert store.embeddings_of(identity.id, OTHER_MODEL)[0] == []
    assert store.get_identity(identity.id).face_count == 1


def test_face_for_unknown_identity_is_refused(store):
    assert store.add_face(_face("missing", 1)) is None
    assert store.counts() == (0, 0)


def test_data_survives_reopening_the_database(tmp_path):
    first = SqliteStore.in_directory(tmp_path)
    identity = first.create_identity("Ada", {"k": "v"})
    record = first.add_face(_face(identity.id, 3))
    first.close()
    second = SqliteStore.in_directory(tmp_path)
    try:
        assert second.get_identity(identity.id).name == "Ada"
        assert [f.face_id for f in second.faces_of(identity.id)] == [record.face_id]
    finally:
        second.close()


def test_journal_is_wal_with_full_sync_and_secure_delete(store):
    with store._connection() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_change_log_records_adds_and_removes_in_commit_order(store):
    identity = store.create_identity("Ada", {})
    first = store.add_face(_face(identity.id, 1))
    second = store.add_face(_face(identity.id, 2))
    store.delete_face(identity.id, first.face_id)
    changes = store.changes_since(0, MODEL).changes
    assert [(c.op, c.index_id) for c in changes] == [
        ("add", first.index_id),
        ("add", second.index_id),
        ("remove", first.index_id),
    ]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    # The add of a face removed since carries no embedding; the live one does.
    assert changes[0].embedding is None and changes[1].embedding is not None
    assert store.changes_since(changes[-1].seq, MODEL).changes == []


def test_index_ids_are_never_reused_after_deletion(store):
    identity = store.create_identity("Ada", {})
    first = store.add_face(_face(identity.id, 1))
    store.delete_face(identity.id, first.face_id)
    second = store.add_face(_face(identity.id, 2))
    assert second.index_id > first.index_id


def test_snapshot_holds_only_the_requested_model_and_counts_the_others(store):
    identity = store.create_identity("Ada", {})
    mine = [store.add_face(_face(identity.id, s)) for s in range(3)]
    store.add_face(_face(identity.id, 9, model=OTHER_MODEL, dim=8))
    snapshot = store.snapshot(MODEL)
    assert list(snapshot.index_ids) == [r.index_id for r in mine]
    assert snapshot.embeddings.shape == (3, 16)
    assert snapshot.other_model_faces == 1
    assert snapshot.seq == store.last_seq()


def test_pruned_change_log_tells_readers_behind_it_to_rebuild(store):
    identity = store.create_identity("Ada", {})
    for seed in range(5):
        store.add_face(_face(identity.id, seed))
    assert store.prune_changes(keep_last=2) == 3
    assert store.changes_since(1, MODEL).complete is False
    recent = store.changes_since(3, MODEL)
    assert recent.complete and len(recent.changes) == 2


def test_delete_identity_removes_its_faces_and_logs_each_removal(store):
    identity = store.create_identity("Ada", {})
    other = store.create_identity("Bob", {})
    faces = [store.add_face(_face(identity.id, s)) for s in range(3)]
    kept = store.add_face(_face(other.id, 7))
    removed = store.delete_identity(identity.id)
    assert sorted(removed) == sorted(f.index_id for f in faces)
    assert store.get_identity(identity.id) is None
    assert store.counts() == (1, 1)
    assert store.labels([f.index_id for f in faces] + [kept.index_id]).keys() == {kept.index_id}
    log = store.changes_since(0, MODEL).changes
    assert sorted(c.index_id for c in log if c.op == "remove") == sorted(removed)
    assert store.delete_identity(identity.id) is None


def _files_contain(directory: Path, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in directory.iterdir() if path.is_file())


def test_deleted_embedding_bytes_are_gone_from_every_file_on_disk(tmp_path):
    store = SqliteStore.in_directory(tmp_path)
    try:
        identity = store.create_identity("Ada", {})
        keeper = store.create_identity("Bob", {})
        erased = _face(identity.id, 11, dim=128)
        kept = _face(keeper.id, 12, dim=128)
        store.add_face(erased)
        store.add_face(kept)
        store.erase()  # move everything into the main file first, like a long-lived gallery
        erased_bytes = erased.embedding.astype("<f4").tobytes()
        assert _files_contain(tmp_path, erased_bytes)  # the check can see stored embeddings
        store.delete_identity(identity.id)
        assert store.erase() is True
        assert not _files_contain(tmp_path, erased_bytes)
        assert _files_contain(tmp_path, kept.embedding.astype("<f4").tobytes())
        rows = sqlite3.connect(tmp_path / DATABASE_NAME).execute(
            "SELECT count(*) FROM faces WHERE identity_id = ?", (identity.id,)
        )
        assert rows.fetchone()[0] == 0
    finally:
        store.close()


def test_a_reader_holding_the_log_delays_the_erasure_to_the_next_deletion(tmp_path, caplog):
    gallery = open_test_gallery(tmp_path, dim=128)
    reader = sqlite3.connect(tmp_path / DATABASE_NAME)
    try:
        first = gallery.create_identity("Ada")
        second = gallery.create_identity("Bob")
        vectors = [unit(np.random.default_rng(seed).standard_normal(128)) for seed in (31, 32)]
        for identity, vector in zip((first, second), vectors, strict=True):
            gallery.add_embedding(identity.id, vector.tolist(), MODEL)
        stored = [
            gallery.store.embeddings_of(identity.id, MODEL)[1][0].astype("<f4").tobytes()
            for identity in (first, second)
        ]
        gallery.store.erase()
        assert all(_files_contain(tmp_path, data) for data in stored)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM faces").fetchone()  # a snapshot from before
        with caplog.at_level("INFO", logger="service.gallery.gallery"):
            gallery.delete_identity(first.id)
        assert (
            "the next deletion or shutdown will finish erasing them from the files" in caplog.text
        )
        assert _files_contain(tmp_path, stored[0])  # not erased from the files yet
        reader.rollback()
        gallery.delete_identity(second.id)
        assert not any(_files_contain(tmp_path, data) for data in stored)
    finally:
        reader.close()
        gallery.close()


def test_concurrent_writers_from_many_threads_lose_nothing(store):
    identity = store.create_identity("Ada", {})
    errors: list[BaseException] = []

    def enrol(seed: int) -> None:
        try:
            for i in range(10):
                assert store.add_face(_face(identity.id, seed * 100 + i)) is not None
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=enrol, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.counts() == (1, 60)
    seqs = [c.seq for c in store.changes_since(0, MODEL).changes]
    assert len(seqs) == 60 and seqs == sorted(set(seqs))


def test_two_stores_on_one_file_see_each_others_writes(tmp_path):
    first, second = SqliteStore.in_directory(tmp_path), SqliteStore.in_directory(tmp_path)
    try:
        identity = first.create_identity("Ada", {})
        record = first.add_face(_face(identity.id, 1))
        assert second.get_identity(identity.id) is not None
        assert [c.index_id for c in second.changes_since(0, MODEL).changes] == [record.index_id]
    finally:
        first.close()
        second.close()


BURST_WIDTH = 16


def _open_handles_on(database: Path) -> int:
    """File descriptors of this process open on the database file (its journal files aside)."""
    found = 0
    for entry in os.scandir("/proc/self/fd"):
        try:
            found += os.readlink(entry.path) == str(database)
        except OSError:  # closed while we looked
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_bursts_from_threads_that_are_retired_do_not_grow_open_handles(store):
    # The server's thread pool retires idle threads and makes new ones for the next burst;
    # per-thread connections leaked one handle per retired thread (23 -> 119 after 5 bursts).
    identity = store.create_identity("Ada", {})
    database = store.path.resolve()

    def burst(width: int) -> None:
        start = threading.Barrier(width)

        def request(seed: int) -> None:
            start.wait()  # all at once: as wide as the burst
            store.add_face(_face(identity.id, seed))
            store.faces_of(identity.id)

        threads = [threading.Thread(target=request, args=(s,)) for s in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # the threads end, as retired pool threads do

    handles = []
    for _ in range(5):
        burst(BURST_WIDTH)
        handles.append(_open_handles_on(database))
    # Bounded by the widest burst: the pool keeps POOL_IDLE_CONNECTIONS, and SQLite holds the
    # descriptors of connections closed while others lock the file for reuse by the next open;
    # one more is the store's anchor on the file it opened.
    assert POOL_IDLE_CONNECTIONS < BURST_WIDTH
    assert 1 <= max(handles) <= BURST_WIDTH + 1, handles
    assert store.counts() == (1, 80)


# --- failing loudly: file modes, a lost database, storage errors ----------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_new_gallery_files_are_private(tmp_path):
    data_dir = tmp_path / "data"
    store = SqliteStore.in_directory(data_dir)
    store.create_identity("Ada", {})
    try:
        assert _mode(data_dir) == 0o700
        for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm", MARKER_NAME):
            assert _mode(data_dir / name) == 0o600, name
    finally:
        store.close()


def test_existing_open_folder_and_database_are_tightened(tmp_path, caplog):
    data_dir = tmp_path / "data"
    SqliteStore.in_directory(data_dir).close()
    data_dir.chmod(0o755)
    (data_dir / DATABASE_NAME).chmod(0o644)
    SqliteStore.in_directory(data_dir).close()
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / DATABASE_NAME) == 0o600
    assert sum("tightened" in r.getMessage() for r in caplog.records) == 2


def test_marker_is_written_only_once_the_gallery_holds_data(tmp_path):
    store = SqliteStore.in_directory(tmp_path)
    store.prune_changes(10)  # the start-up write of every service: no data
    assert not (tmp_path / MARKER_NAME).exists()
    store.create_identity("Ada", {})
    assert (tmp_path / MARKER_NAME).exists()
    store.close()


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_start_up_refuses_a_lost_database_where_the_marker_records_data(tmp_path, loss):
    store = SqliteStore.in_directory(tmp_path)
    store.create_identity("Ada", {})
    store.close()
    if loss == "deleted":
        for path in tmp_path.glob(f"{DATABASE_NAME}*"):
            path.unlink()
    else:
        os.truncate(tmp_path / DATABASE_NAME, 0)
    with pytest.raises(GalleryStoreError, match="FACEVERIFY_GALLERY_ALLOW_EMPTY"):
        check_data_dir(tmp_path)
    with pytest.raises(GalleryStoreError, match=MARKER_NAME):
        SqliteStore.in_directory(tmp_path)
    fresh = SqliteStore.in_directory(tmp_path, allow_empty=True)
    assert fresh.counts() == (0, 0)
    fresh.create_identity("Bo", {})
    fresh.close()
    SqliteStore.in_directory(tmp_path).close()  # the marker now follows the new database


def test_start_up_refuses_another_gallerys_database(tmp_path):
    for folder in ("a", "b"):
        store = SqliteStore.in_directory(tmp_path / folder)
        store.create_identity(folder, {})
        store.close()
    os.replace(tmp_path / "b" / DATABASE_NAME, tmp_path / "a" / DATABASE_NAME)
    with pytest.raises(GalleryStoreError, match="is another gallery"):
        check_data_dir(tmp_path / "a")
    with pytest.raises(GalleryStoreError, match="is another gallery"):
        SqliteStore.in_directory(tmp_path / "a")
    chosen = SqliteStore.in_directory(tmp_path / "a", allow_empty=True)
    assert [i.name for i in chosen.list_identities(10, 0)] == ["b"]
    chosen.close()
    SqliteStore.in_directory(tmp_path / "a").close()  # the marker now follows it


def test_writes_into_a_deleted_database_are_refused_and_no_new_file_is_made(tmp_path):
    metrics = Metrics.create()
    store = SqliteStore.in_directory(tmp_path, metrics=metrics)
    ada = store.create_identity("Ada", {})
    for path in tmp_path.glob(f"{DATABASE_NAME}*"):
        path.unlink()
    for write in (
        lambda: store.create_identity("Bo", {}),
        lambda: store.add_face(_face(ada.id, 1)),
        lambda: store.delete_identity(ada.id),
    ):
        with pytest.raises(ServiceError) as refused:
            write()
        assert refused.value.code is ErrorCode.GALLERY_UNAVAILABLE
        assert refused.value.headers == {"Retry-After": "10"}
    assert "is gone" in store.health()
    assert metrics.storage_errors.labels("gone")._value.get() == 3
    store.close()
    assert not (tmp_path / DATABASE_NAME).exists()


def test_a_write_lock_held_past_the_busy_timeout_is_storage_busy(tmp_path):
    store = SqliteStore.in_directory(tmp_path, busy_timeout_s=0.2)
    holder = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(ServiceError) as refused:
        store.create_identity("Ada", {})
    assert refused.value.code is ErrorCode.STORAGE_BUSY
    assert refused.value.headers == {"Retry-After": "1"}
    assert "write lock" in store.health()
    holder.execute("ROLLBACK")
    holder.close()
    assert store.health() is None
    assert store.create_identity("Ada", {}) is not None
    store.close()


def test_a_restored_copy_of_this_gallery_is_adopted_and_a_stale_one_is_not(tmp_path):
    store = SqliteStore.in_directory(tmp_path / "data")
    database = store.path
    store.create_identity("Ada", {})
    stale = tmp_path / "stale.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(stale) as copy:
        source.backup(copy)
    store.create_identity("Bo", {})
    current = tmp_path / "current.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(current) as copy:
        source.backup(copy)
    for path in database.parent.glob(f"{DATABASE_NAME}*"):
        path.unlink()
    os.replace(stale, database)
    assert "lacks the last 1" in store.health()
    os.replace(current, database)
    assert store.health() is None
    assert store.create_identity("Cy", {}) is not None
    assert store.counts() == (3, 0)
    store.close()


def test_a_connection_borrowed_before_an_adoption_cannot_acknowledge_a_write(tmp_path):
    # It is open on the replaced file: its write would be lost with that file.
    store = SqliteStore.in_directory(tmp_path / "data")
    database = store.path
    store.create_identity("Ada", {})
    copy_path = tmp_path / "copy.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(copy_path) as copy:
        source.backup(copy)
    with store._lease() as (old, generation):
        for path in database.parent.glob(f"{DATABASE_NAME}*"):
            path.unlink()
        os.replace(copy_path, database)
        assert store.health() is None  # adopted
        old.execute("BEGIN IMMEDIATE")
        with pytest.raises(ServiceError) as refused:
            store._require_file(generation)
        old.execute("ROLLBACK")
    assert refused.value.code is ErrorCode.GALLERY_UNAVAILABLE
    assert store.create_identity("Bo", {}) is not None
    assert store.counts() == (2, 0)
    store.close()


def test_the_first_write_after_a_copy_is_put_back_is_acknowledged_into_it(tmp_path):
    store = SqliteStore.in_directory(tmp_path / "data")
    database = store.path
    store.create_identity("Ada", {})
    copy_path = tmp_path / "copy.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(copy_path) as copy:
        source.backup(copy)
    for path in database.parent.glob(f"{DATABASE_NAME}*"):
        path.unlink()
    os.replace(copy_path, database)
    bo = store.create_identity("Bo", {})  # no readiness check saw the copy first
    store.close()
    reopened = SqliteStore.in_directory(tmp_path / "data")
    assert reopened.get_identity(bo.id) is not None
    assert reopened.counts() == (2, 0)
    reopened.close()
