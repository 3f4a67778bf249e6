"""The Gallery facade: 1:N ranking, 1:1 compare, model tagging, and several workers (each its
own Gallery on one database) staying consistent through the change log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gallery_support import MODEL, OTHER_MODEL, clustered, open_test_gallery, probe_near, unit

from service.errors import ErrorCode, ServiceError
from service.gallery import persisted, sync
from service.gallery.gallery import Gallery
from service.gallery.index import FaceIndex
from service.gallery.persisted import index_path
from service.gallery.store import SqliteStore
from service.metrics import Metrics

DIM = 32


def _enrol(gallery: Gallery, name: str, vectors: np.ndarray) -> tuple[str, list[str]]:
    identity = gallery.create_identity(name, {"source": "test"})
    face_ids = [
        gallery.add_face(identity.id, v, quality=10.0, det_score=0.9, image_sha256="0" * 64).face_id
        for v in vectors
    ]
    return identity.id, face_ids


@pytest.fixture
def populated(tmp_path: Path):
    """A gallery of 20 identities x 3 faces, and the centres of their clusters."""
    centres, faces, labels = clustered(20, 3, DIM, seed=2)
    gallery = open_test_gallery(tmp_path, dim=DIM)
    ids = [_enrol(gallery, f"person {i}", faces[labels == i])[0] for i in range(len(centres))]
    yield gallery, centres, ids
    gallery.close()


def test_identify_ranks_identities_by_their_best_face(populated):
    gallery, centres, ids = populated
    probe = probe_near(centres[4], seed=40)
    [candidates] = gallery.identify(probe[None], top_k=5)
    assert len(candidates) == 5
    assert candidates[0].identity_id == ids[4] and candidates[0].name == "person 4"
    assert len({c.identity_id for c in candidates}) == 5  # one entry per identity
    similarities = [c.similarity for c in candidates]
    assert similarities == sorted(similarities, reverse=True)
    faces, vectors = gallery.store.embeddings_of(ids[4], MODEL)
    best = int(np.argmax(vectors @ probe))
    assert candidates[0].face_id == faces[best].face_id
    assert candidates[0].similarity == pytest.approx(float(vectors[best] @ probe), abs=1e-5)


def test_identify_widens_search_when_one_identity_fills_the_top_faces(tmp_path):
    gallery = open_test_gallery(tmp_path, dim=DIM)
    try:
        centre = unit(np.random.default_rng(0).standard_normal(DIM))
        many = np.stack([probe_near(centre, seed=s, noise=0.1) for s in range(40)])
        _enrol(gallery, "many faces", many)
        far = unit(np.random.default_rng(1).standard_normal((3, DIM)))
        others = [_enrol(gallery, f"other {i}", far[i : i + 1])[0] for i in range(3)]
        [candidates] = gallery.identify(centre[None], top_k=4)
        assert len(candidates) == 4
        assert {c.identity_id for c in candidates[1:]} == set(others)
    finally:
        gallery.close()


def test_identify_handles_a_batch_of_queries_and_an_empty_gallery(tmp_path, populated):
    gallery, centres, ids = populated
    results = gallery.identify(np.stack([probe_near(c, seed=i) for i, c in enumerate(centres)]), 1)
    assert [r[0].identity_id for r in results] == ids
    empty = open_test_gallery(tmp_path / "empty", dim=DIM)
    try:
        assert empty.identify(centres[:2], top_k=5) == [[], []]
    finally:
        empty.close()


def test_compare_gives_best_face_of_the_identity(populated):
    gallery, centres, ids = populated
    probe = probe_near(centres[2], seed=7)
    match = gallery.compare(ids[2], probe)
    faces, vectors = gallery.store.embeddings_of(ids[2], MODEL)
    assert match.similarity == pytest.approx(float(np.max(vectors @ probe)), abs=1e-5)
    assert match.face_id == faces[int(np.argmax(vectors @ probe))].face_id
    assert match.name == "person 2"


def test_compare_errors_say_what_is_wrong(populated):
    gallery, centres, _ = populated
    with pytest.raises(ServiceError) as unknown:
        gallery.compare("no-such-identity", centres[0])
    assert unknown.value.code is ErrorCode.NOT_FOUND
    bare = gallery.create_identity("no faces yet")
    with pytest.raises(ServiceError) as empty:
        gallery.compare(bare.id, centres[0])
    assert empty.value.code is ErrorCode.IDENTITY_HAS_NO_FACES and "enrol" in empty.value.message


def test_other_models_faces_are_never_compared(tmp_path):
    """A gallery enrolled with model A, served with model B: identify answers model_mismatch
    (an 'unknown' could be wrong), compare refuses identities with only A faces, and once the
    A faces are replaced by B faces everything works again."""
    old = open_test_gallery(tmp_path, dim=16, model_id=OTHER_MODEL)
    old_face_vectors = unit(np.random.default_rng(3).standard_normal((2, 16)))
    identity_id, old_faces = _enrol(old, "Ada", old_face_vectors)
    old.close()

    new = open_test_gallery(tmp_path, dim=DIM, model_id=MODEL)
    try:
        probe = unit(np.random.default_rng(4).standard_normal(DIM))
        with pytest.raises(ServiceError) as identify_error:
            new.identify(probe[None], top_k=3)
        assert identify_error.value.code is ErrorCode.MODEL_MISMATCH
        assert OTHER_MODEL in identify_error.value.message
        assert "re-enrol" in identify_error.value.message.lower()
        with pytest.raises(ServiceError) as compare_error:
            new.compare(identity_id, probe)
        assert compare_error.value.code is ErrorCode.MODEL_MISMATCH

        new.add_face(identity_id, probe, quality=1.0, det_score=0.9, image_sha256="1" * 64)
        assert new.compare(identity_id, probe).similarity == pytest.approx(1.0, abs=1e-5)
        for face_id in old_faces:
            new.delete_face(identity_id, face_id)
        [candidates] = new.identify(probe[None], top_k=3)
        assert candidates[0].identity_id == identity_id
    finally:
        new.close()


def test_enrolment_in_one_worker_is_found_by_the_next_search_of_another(tmp_path):
    worker_a = open_test_gallery(tmp_path, dim=DIM)
    worker_b = open_test_gallery(tmp_path, dim=DIM)
    try:
        vector = unit(np.random.default_rng(9).standard_normal(DIM))
        assert worker_b.identify(vector[None], 1) == [[]]
        identity_id, _ = _enrol(worker_a, "Ada", vector[None])
        [candidates] = worker_b.identify(vector[None], 1)
        assert candidates[0].identity_id == identity_id
    finally:
        worker_a.close()
        worker_b.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_identity_deleted_in_one_worker_never_appears_in_another(tmp_path, kind):
    centres, faces, labels = clustered(10, 3, DIM, seed=3)
    worker_a = open_test_gallery(tmp_path, dim=DIM, index_setting=kind)
    ids = [_enrol(worker_a, f"p{i}", faces[labels == i])[0] for i in range(10)]
    worker_b = open_test_gallery(tmp_path, dim=DIM, index_setting=kind)
    try:
        probe = probe_near(centres[0], seed=1)
        assert worker_b.identify(probe[None], 3)[0][0].identity_id == ids[0]
        worker_a.delete_identity(ids[0])
        for results in (worker_a.identify(probe[None], 10), worker_b.identify(probe[None], 10)):
            assert ids[0] not in {c.identity_id for c in results[0]}
            assert len(results[0]) == 9
        store_ids = np.sort(worker_a.store.snapshot(MODEL).index_ids)
        np.testing.assert_array_equal(worker_a.indexed_ids(), store_ids)
        np.testing.assert_array_equal(worker_b.indexed_ids(), store_ids)
    finally:
        worker_a.close()
        worker_b.close()


def test_idle_worker_drops_deleted_faces_from_memory_without_a_request(tmp_path):
    vector = unit(np.random.default_rng(5).standard_normal(DIM))
    worker_a = open_test_gallery(tmp_path, dim=DIM)
    identity_id, _ = _enrol(worker_a, "Ada", vector[None])
    idle = Gallery(
        SqliteStore.in_directory(tmp_path),
        model_id=MODEL,
        dim=DIM,
        index_setting="flat",
        use_gpu=False,
        poll_interval_s=0.05,
    )
    try:
        assert idle.index_state.size == 1
        worker_a.delete_identity(identity_id)
        deadline = time.monotonic() + 5
        while idle.index_state.size and time.monotonic() < deadline:
            time.sleep(0.02)
        assert idle.index_state.size == 0
    finally:
        worker_a.close()
        idle.close()


def test_a_worker_behind_a_pruned_change_log_rebuilds(tmp_path):
    worker_a = open_test_gallery(tmp_path, dim=DIM)
    worker_b = open_test_gallery(tmp_path, dim=DIM)
    try:
        vectors = unit(np.random.default_rng(6).standard_normal((6, DIM)))
        identity_id, _ = _enrol(worker_a, "Ada", vectors)
        worker_a.store.prune_changes(keep_last=1)
        [candidates] = worker_b.identify(vectors[:1], 1)
        assert candidates[0].identity_id == identity_id
        assert worker_b.index_state.size == 6
    finally:
        worker_a.close()
        worker_b.close()


def test_auto_index_turns_approximate_when_the_gallery_crosses_the_threshold(tmp_path):
    metrics = Metrics.create()
    gallery = open_test_gallery(
        tmp_path, dim=DIM, index_setting="auto", approx_min_faces=50, metrics=metrics
    )
    try:
        _, faces, _ = clustered(20, 3, DIM, seed=8)
        _enrol(gallery, "first", faces[:10])
        gallery.identify(faces[:1], 1)
        assert gallery.index_state.kind == "flat"
        _enrol(gallery, "rest", faces[10:])
        [candidates] = gallery.identify(faces[:1], 1)
        assert gallery.index_state.kind != "flat"
        assert gallery.index_state.size == 60
        assert candidates[0].name == "first"
        value = metrics.registry.get_sample_value
        assert value("faceverify_index_info", {"type": "flat", "device": "cpu"}) == 0
        assert value("faceverify_index_info", {"type": "ivf", "device": "cpu"}) == 1
    finally:
        gallery.close()


def test_metrics_report_gallery_size_index_and_search(tmp_path):
    metrics = Metrics.create()
    gallery = open_test_gallery(tmp_path, dim=DIM, metrics=metrics)
    try:
        vectors = unit(np.random.default_rng(7).standard_normal((3, DIM)))
        _enrol(gallery, "Ada", vectors)
        gallery.create_identity("Bob")
        gallery.identify(vectors[:2], 1)
        value = metrics.registry.get_sample_value
        assert value("faceverify_gallery_identities") == 2
        assert value("faceverify_gallery_faces") == 3
        assert value("faceverify_index_info", {"type": "flat", "device": "cpu"}) == 1
        assert value("faceverify_search_duration_seconds_count") == 1
        assert value("faceverify_best_match_similarity_count") == 2
        assert value("faceverify_best_match_similarity_bucket", {"le": "1.0"}) == 2
    finally:
        gallery.close()


def test_parallel_enrolment_and_identification_stay_consistent(tmp_path):
    centres, faces, labels = clustered(12, 4, DIM, seed=11)
    worker_a = open_test_gallery(tmp_path, dim=DIM)
    worker_b = open_test_gallery(tmp_path, dim=DIM)
    ids = [worker_a.create_identity(f"p{i}").id for i in range(len(centres))]
    errors: list[BaseException] = []
    wrong: list[tuple[int, str]] = []

    def enrol(worker: Gallery, part: int) -> None:
        try:
            for position in range(part, len(faces), 2):
                worker.add_face(
                    ids[labels[position]],
                    faces[position],
                    quality=1.0,
                    det_score=0.9,
                    image_sha256="2" * 64,
                )
        except BaseException as error:
            errors.append(error)

    def identify(worker: Gallery) -> None:
        try:
            for round_ in range(30):
                person = round_ % len(centres)
                [candidates] = worker.identify(probe_near(centres[person], seed=round_)[None], 1)
                # Answers are either "not enrolled yet" or the right person, never another.
                if (
                    candidates
                    and candidates[0].similarity > 0.6
                    and (candidates[0].identity_id != ids[person])
                ):
                    wrong.append((person, candidates[0].identity_id))
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=enrol, args=(worker_a, 0)),
        threading.Thread(target=enrol, args=(worker_b, 1)),
        threading.Thread(target=identify, args=(worker_a,)),
        threading.Thread(target=identify, args=(worker_b,)),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and wrong == []
        expected = np.sort(worker_a.store.snapshot(MODEL).index_ids)
        assert len(expected) == len(faces)
        np.testing.assert_array_equal(worker_a.indexed_ids(), expected)
        np.testing.assert_array_equal(worker_b.indexed_ids(), expected)
        results = worker_b.identify(np.stack([probe_near(c, seed=99) for c in centres]), 1)
        assert [r[0].identity_id for r in results] == ids
    finally:
        worker_a.close()
        worker_b.close()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_deleting_an_identity_removes_its_faces_from_another_worker_in_one_batch(
    tmp_path, monkeypatch, kind
):
    # Removals ran one id per FAISS call under the lock searches wait for (198 ms for five
    # faces at 200k x 512; 39 ms as one batch).
    centres, faces, labels = clustered(6, 5, DIM, seed=5)
    worker_a = open_test_gallery(tmp_path, dim=DIM, index_setting=kind)
    ids = [_enrol(worker_a, f"p{i}", faces[labels == i])[0] for i in range(len(centres))]
    worker_b = open_test_gallery(tmp_path, dim=DIM, index_setting=kind)
    removals: list[list[int]] = []
    real_remove = FaceIndex.remove

    def recording_remove(index: FaceIndex, index_ids: np.ndarray) -> int:
        removals.append(sorted(int(i) for i in index_ids))
        return real_remove(index, index_ids)

    try:
        doomed = {f.index_id for f in worker_a.store.faces_of(ids[0])}
        worker_a.delete_identity(ids[0])
        monkeypatch.setattr(FaceIndex, "remove", recording_remove)
        worker_b.indexed_ids()  # catches up
        assert removals == [sorted(doomed)]
        assert not doomed & set(worker_b.indexed_ids().tolist())
        assert len(worker_b.indexed_ids()) == 25
        [candidates] = worker_b.identify(probe_near(centres[0], seed=1)[None], top_k=10)
        assert ids[0] not in {c.identity_id for c in candidates}
    finally:
        worker_a.close()
        worker_b.close()


class _DeleteAfterFirstRead:
    """A store that deletes an identity right after the next read: the delete of another
    request landing between two reads of one `compare`."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.doomed: str | None = None

    def __getattr__(self, name: str):
        attribute = getattr(self._store, name)
        if self.doomed is None or not callable(attribute):
            return attribute

        def read_then_delete(*args, **kwargs):
            result = attribute(*args, **kwargs)
            doomed, self.doomed = self.doomed, None
            self._store.delete_identity(doomed)
            return result

        return read_then_delete


def test_compare_racing_a_delete_answers_the_identity_or_not_found_never_mismatch(tmp_path):
    store = _DeleteAfterFirstRead(SqliteStore.in_directory(tmp_path))
    gallery = Gallery(store, model_id=MODEL, dim=DIM, use_gpu=False, poll_interval_s=None)
    try:
        centres, faces, _ = clustered(1, 2, DIM, seed=9)
        identity_id, face_ids = _enrol(gallery, "Ada", faces)
        store.doomed = identity_id
        try:
            match = gallery.compare(identity_id, probe_near(centres[0], seed=3))
        except ServiceError as error:
            assert error.code == ErrorCode.NOT_FOUND, error
        else:
            assert match.identity_id == identity_id and match.face_id in face_ids
        assert store.doomed is None  # the delete did land during the compare
        with pytest.raises(ServiceError) as gone:
            gallery.compare(identity_id, probe_near(centres[0], seed=3))
        assert gone.value.code == ErrorCode.NOT_FOUND
    finally:
        gallery.close()


def _worker(data_dir: Path, saved: Path) -> Gallery:
    return Gallery(
        SqliteStore.in_directory(data_dir),
        model_id=MODEL,
        dim=DIM,
        index_setting="flat",
        use_gpu=False,
        poll_interval_s=None,
        saved_index=saved,
    )


def test_a_worker_starts_from_the_saved_index_catches_up_and_deletion_removes_it(
    tmp_path, monkeypatch
):
    # Rebuilding from SQLite took 117 s at 1M faces; a saved index with its seq is loaded and
    # caught up instead. It holds embeddings, so a deletion removes it.
    monkeypatch.setattr(sync, "SAVE_MIN_FACES", 1)
    saved = index_path(tmp_path, MODEL)
    centres, faces, labels = clustered(8, 3, DIM, seed=6)
    first = _worker(tmp_path, saved)
    ids = [_enrol(first, f"p{i}", faces[labels == i])[0] for i in range(4)]
    first.close()
    first = _worker(tmp_path, saved)  # builds (12 faces) and saves
    assert saved.is_file()
    later = [_enrol(first, f"p{i}", faces[labels == i])[0] for i in range(4, 8)]
    builds: list[int] = []
    real_build = FaceIndex.build.__func__

    def counting_build(cls, *args, **kwargs):
        builds.append(1)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(FaceIndex, "build", classmethod(counting_build))
    second = _worker(tmp_path, saved)
    try:
        assert builds == []  # loaded, not rebuilt
        assert len(second.indexed_ids()) == 24
        found = second.identify(np.stack([probe_near(c, seed=2) for c in centres]), top_k=1)
        assert [r[0].identity_id for r in found] == ids + later

        doomed_vector = faces[labels == 0][0].astype("<f4").tobytes()
        second.delete_identity(ids[0])
        assert not saved.exists()
        assert not any(doomed_vector in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    finally:
        first.close()
        second.close()
    saved.write_bytes(b'{"format": 1}\ngarbage')  # a damaged file: rebuilt, not trusted
    third = _worker(tmp_path, saved)
    try:
        assert builds == [1]
        assert len(third.indexed_ids()) == 21
    finally:
        third.close()


def test_the_saved_index_is_owner_only_and_its_checksum_covers_header_and_vectors(tmp_path):
    _, faces, _ = clustered(3, 2, DIM, seed=9)
    index = FaceIndex.build(DIM, "flat", np.arange(1, 7), faces, use_gpu=False)
    path = index_path(tmp_path, MODEL)
    assert persisted.save(path, index, model_id=MODEL, seq=6, trained_on=6, other_model_faces=0)
    assert path.stat().st_mode & 0o777 == 0o600  # biometric data
    healthy = path.read_bytes()
    assert persisted.load(path, model_id=MODEL, dim=DIM, use_gpu=False) is not None
    seq_digit = healthy.index(b'"seq": 6') + len(b'"seq": ')
    vector_byte = healthy.index(faces[3].astype("<f4").tobytes()) + 5
    for position in (seq_digit, vector_byte, len(healthy) - 1):
        damaged = bytearray(healthy)
        damaged[position] ^= 0x01  # seq 6 -> 7 still parses: only the checksum tells
        path.write_bytes(bytes(damaged))
        assert persisted.load(path, model_id=MODEL, dim=DIM, use_gpu=False) is None, position


def test_a_saved_index_that_cannot_be_rewritten_after_a_replayed_deletion_is_removed(
    tmp_path, monkeypatch
):
    # The disk is full at start-up: the file that still holds a deleted face must go anyway.
    monkeypatch.setattr(sync, "SAVE_MIN_FACES", 1)
    saved = index_path(tmp_path, MODEL)
    _, faces, labels = clustered(3, 3, DIM, seed=8)
    first = _worker(tmp_path, saved)
    ids = [_enrol(first, f"p{i}", faces[labels == i])[0] for i in range(3)]
    first.close()
    _worker(tmp_path, saved).close()  # builds and saves
    store = SqliteStore.in_directory(tmp_path)
    store.delete_identity(ids[0])  # committed; the process dies before removing the file
    store.close()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persisted, "save", disk_full)
    second = _worker(tmp_path, saved)
    try:
        assert not saved.exists()
        assert len(second.indexed_ids()) == 6
    finally:
        second.close()


def test_a_saved_index_newer_than_a_restored_database_is_rebuilt(tmp_path, monkeypatch):
    # A database restored from a backup under a newer saved index with the same face count:
    # the file's faces are not the store's faces.
    monkeypatch.setattr(sync, "SAVE_MIN_FACES", 1)
    saved = index_path(tmp_path, MODEL)
    centres, faces, labels = clustered(5, 3, DIM, seed=4)
    first = _worker(tmp_path, saved)
    ids = [_enrol(first, f"p{i}", faces[labels == i])[0] for i in range(4)]
    first.close()
    backup = (tmp_path / "gallery.sqlite3").read_bytes()  # closed: the WAL is folded in
    second = _worker(tmp_path, saved)
    second.delete_identity(ids[0])
    _enrol(second, "p4", faces[labels == 4])
    second.close()
    _worker(tmp_path, saved).close()  # saves 12 faces at a later seq than the backup's
    assert saved.is_file()
    for leftover in tmp_path.glob("gallery.sqlite3-*"):
        leftover.unlink()
    (tmp_path / "gallery.sqlite3").write_bytes(backup)

    restored = _worker(tmp_path, saved)
    try:
        found = restored.identify(np.stack([probe_near(c, seed=5) for c in centres[:4]]), top_k=1)
        assert [r[0].identity_id for r in found] == ids
    finally:
        restored.close()
