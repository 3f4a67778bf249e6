"""The SQLite store: CRUD, durability across reopen, the change log, and verified erasure."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from gallery_support import MODEL, OTHER_MODEL, open_test_gallery, unit

from service.gallery.store import DATABASE_NAME, POOL_IDLE_CONNECTIONS, NewFace, SqliteStore


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
