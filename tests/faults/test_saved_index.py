"""A damaged, stale or foreign saved FAISS index never gives a wrong identity, and no deleted
embedding survives in the files of the data folder.

The saved index (service/gallery/persisted.py) is what a worker searches when it starts from it
instead of the store. Each scenario damages that file the way a disk, an operator or a crash
would, opens the gallery the way the app does (`open_gallery`), and asserts that every enrolled
face's own embedding finds its own identity (the gallery was rebuilt from the store, not the
file), and that the file on disk was rewritten healthy (checksum, vectors and ids equal the
store's, mode 0600). The erasure scenarios scan the bytes of every file in the data folder.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from index_support import (
    DIM,
    MODEL,
    OTHER_MODEL,
    Enrolled,
    assert_healthy_file,
    copy_gallery,
    enrol_random,
    files_holding,
    open_served,
    saved_file,
    vector_offset,
    wrong_answers,
)

from service.gallery import persisted, sync
from service.gallery.gallery import Gallery
from service.gallery.interface import NewFace
from service.gallery.store import SqliteStore

IDENTITIES = 150  # 299 faces


@pytest.fixture(autouse=True)
def save_small_galleries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "SAVE_MIN_FACES", 1)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Enrolled]:
    """A data folder with a gallery and its healthy saved (flat) index."""
    folder = tmp_path_factory.mktemp("pristine") / "data"
    enrolled = enrol_random(folder, IDENTITIES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sync, "SAVE_MIN_FACES", 1)
        open_served(folder).close()
    assert saved_file(folder).is_file()
    return folder, enrolled


def _damaged_copy(
    pristine: tuple[Path, Enrolled],
    tmp_path: Path,
    damage: Callable[[bytearray, Enrolled], None],
    kind: str = "flat",
) -> tuple[Path, Enrolled, bytes]:
    """A copy of the gallery whose saved index (of `kind`) was damaged by `damage`."""
    folder = copy_gallery(pristine[0], tmp_path / "data")
    enrolled = pristine[1]
    if kind != "flat":
        saved_file(folder).unlink()
        open_served(folder, kind).close()  # type: ignore[arg-type]
    data = bytearray(saved_file(folder).read_bytes())
    damage(data, enrolled)
    saved_file(folder).write_bytes(bytes(data))
    return folder, enrolled, bytes(data)


def _served_answers_right_and_rewrote_the_file(
    folder: Path, enrolled: Enrolled, damaged: bytes, kind: str = "flat"
) -> None:
    gallery = open_served(folder, kind)  # type: ignore[arg-type]
    try:
        assert wrong_answers(gallery, enrolled) == []
    finally:
        gallery.close()
    assert_healthy_file(folder, enrolled, damaged)


def _swap_first_two_identities(data: bytearray, enrolled: Enrolled) -> None:
    # Face 0 is person 0's, face 2 person 1's: the file would answer one for the other.
    first = vector_offset(bytes(data), enrolled.vectors[0])
    second = vector_offset(bytes(data), enrolled.vectors[2])
    size = DIM * 4
    data[first : first + size], data[second : second + size] = (
        data[second : second + size],
        data[first : first + size],
    )


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_swapped_vectors_in_the_saved_index_never_answer_the_wrong_identity(
    pristine, tmp_path, kind
):
    folder, enrolled, damaged = _damaged_copy(pristine, tmp_path, _swap_first_two_identities, kind)
    _served_answers_right_and_rewrote_the_file(folder, enrolled, damaged, kind)


def test_a_zeroed_vector_in_the_saved_index_never_answers_the_wrong_identity(pristine, tmp_path):
    def zero_first(data: bytearray, enrolled: Enrolled) -> None:
        offset = vector_offset(bytes(data), enrolled.vectors[0])
        data[offset : offset + DIM * 4] = bytes(DIM * 4)

    folder, enrolled, damaged = _damaged_copy(pristine, tmp_path, zero_first)
    _served_answers_right_and_rewrote_the_file(folder, enrolled, damaged)


def _structural_positions(data: bytes, enrolled: Enrolled) -> list[int]:
    """34 positions: 8 in the JSON header, 10 in FAISS's header before the vectors, 12 in
    what follows the vectors (the id map from index rows to faces), and 4 in the vectors."""
    header_end = data.index(b"\n")
    vectors_start = vector_offset(data, enrolled.vectors[0])
    vectors_end = vectors_start + len(enrolled.vectors) * DIM * 4
    assert vector_offset(data, enrolled.vectors[-1]) == vectors_end - DIM * 4
    areas = [
        (0, header_end, 8),
        (header_end + 1, vectors_start, 10),
        (vectors_end, len(data), 12),
        (vectors_start, vectors_end, 4),
    ]
    return [
        int(p) for start, end, count in areas for p in np.linspace(start, end - 1, count).round()
    ]


def test_every_single_byte_flip_in_the_saved_index_is_caught_and_the_file_rewritten(
    pristine, tmp_path
):
    folder = copy_gallery(pristine[0], tmp_path / "data")
    enrolled = pristine[1]
    healthy = saved_file(folder).read_bytes()
    positions = _structural_positions(healthy, enrolled)
    assert len(set(positions)) == 34
    for position in positions:
        damaged = bytearray(healthy)
        damaged[position] ^= 0x01  # the smallest change: '4' <-> '5' in the header's digits
        saved_file(folder).write_bytes(bytes(damaged))
        gallery = open_served(folder)
        try:
            assert wrong_answers(gallery, enrolled) == [], f"byte {position} flipped"
        finally:
            gallery.close()
        assert_healthy_file(folder, enrolled, bytes(damaged))


@pytest.mark.parametrize("keep", ["nothing", "half_the_header", "the_header", "all_but_one_byte"])
def test_a_truncated_saved_index_is_rebuilt_and_rewritten(pristine, tmp_path, keep):
    def truncate(data: bytearray, enrolled: Enrolled) -> None:
        header_end = data.index(b"\n") + 1
        lengths = {
            "nothing": 0,
            "half_the_header": header_end // 2,
            "the_header": header_end,
            "all_but_one_byte": len(data) - 1,
        }
        del data[lengths[keep] :]

    folder, enrolled, damaged = _damaged_copy(pristine, tmp_path, truncate)
    _served_answers_right_and_rewrote_the_file(folder, enrolled, damaged)


def test_a_garbled_header_is_rebuilt_and_rewritten(pristine, tmp_path):
    def garble(data: bytearray, enrolled: Enrolled) -> None:
        data[: data.index(b"\n")] = b"\x00\xff garbage \xfe" * 5

    folder, enrolled, damaged = _damaged_copy(pristine, tmp_path, garble)
    _served_answers_right_and_rewrote_the_file(folder, enrolled, damaged)


def test_a_saved_index_of_the_old_format_without_checksum_is_never_trusted(pristine, tmp_path):
    # Format 1 carried no checksum: a damaged one looked as good as a healthy one.
    def as_old_format(data: bytearray, enrolled: Enrolled) -> None:
        _swap_first_two_identities(data, enrolled)
        header_end = data.index(b"\n")
        header = json.loads(data[:header_end])
        old = {key: header[key] for key in ("model_id", "dim", "kind", "seq", "trained_on")}
        old.update(format=1, other_model_faces=header["other_model_faces"], size=header["size"])
        data[:header_end] = json.dumps(old).encode()

    folder, enrolled, damaged = _damaged_copy(pristine, tmp_path, as_old_format)
    _served_answers_right_and_rewrote_the_file(folder, enrolled, damaged)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_whole_saved_index_of_another_gallery_is_caught_by_the_sample_of_vectors(
    pristine, tmp_path, kind
):
    # Same model, same ids, same change-log position, a valid checksum: only its vectors differ
    # (another data folder's file copied in, or a database restored under it).
    other = tmp_path / "other"
    enrol_random(other, IDENTITIES, seed=1)
    open_served(other, kind).close()  # type: ignore[arg-type]
    folder = copy_gallery(pristine[0], tmp_path / "data")
    foreign = saved_file(other).read_bytes()
    saved_file(folder).write_bytes(foreign)
    assert persisted.load(saved_file(folder), model_id=MODEL, dim=DIM, use_gpu=False) is not None
    _served_answers_right_and_rewrote_the_file(folder, pristine[1], foreign, kind)


def _without_identity(enrolled: Enrolled, identity_id: str) -> Enrolled:
    keep = [i for i, owner in enumerate(enrolled.identity_ids) if owner != identity_id]
    return Enrolled(
        [enrolled.identity_ids[i] for i in keep], enrolled.index_ids[keep], enrolled.vectors[keep]
    )


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_deletion_committed_before_a_crash_leaves_no_copy_of_the_embedding_on_disk(
    pristine, tmp_path, kind
):
    # The crash: the delete committed in the store, the process died before the saved index
    # was removed. The restarted service replays the delete; the file must not keep it.
    folder, enrolled, _ = _damaged_copy(pristine, tmp_path, lambda data, enrolled: None, kind)
    doomed_identity, doomed = enrolled.identity_ids[0], enrolled.vectors[:2]
    store = SqliteStore.in_directory(folder)
    assert store.delete_identity(doomed_identity) is not None
    assert store.erase()
    store.close()
    assert files_holding(folder, doomed[0]) == [saved_file(folder).name]  # the gap, staged

    gallery = open_served(folder, kind)  # type: ignore[arg-type]
    try:
        remaining = _without_identity(enrolled, doomed_identity)
        assert wrong_answers(gallery, remaining) == []
        answers = gallery.identify(doomed, top_k=1)
        assert all(not a or a[0].identity_id != doomed_identity for a in answers)
        for vector in doomed:
            assert files_holding(folder, vector) == []
    finally:
        gallery.close()
    if kind == "hnsw":
        # HNSW cannot drop the node, only zero it and exclude it: such an index is not
        # saved, the file is removed and the next start rebuilds.
        assert not saved_file(folder).exists()
    else:
        # The scan can see embeddings: a kept face is found in the rewritten file.
        assert saved_file(folder).name in files_holding(folder, remaining.vectors[0])
        assert_healthy_file(folder, remaining, None)


def test_temporary_files_of_an_interrupted_save_are_removed_and_a_live_writers_kept(
    pristine, tmp_path
):
    folder = copy_gallery(pristine[0], tmp_path / "data")
    enrolled = pristine[1]
    name = saved_file(folder).name
    abandoned = folder / f"{name}k3j2h1.tmp"
    abandoned.write_bytes(saved_file(folder).read_bytes()[:5000])  # a crash mid-write
    assert abandoned.name in files_holding(folder, enrolled.vectors[0])
    being_written = folder / f"{name}a8b7c6.tmp"
    with being_written.open("wb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)  # as `persisted.save` holds it
        open_served(folder).close()
        assert being_written.exists()
    assert not abandoned.exists()
    open_served(folder).close()  # nobody holds it now: removed
    assert not being_written.exists()


def _other_model_index(folder: Path) -> tuple[Path, list[str], np.ndarray]:
    """Faces of an older model in the store, and that model's saved index next to ours."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = SqliteStore.in_directory(folder)
    identity = store.create_identity("enrolled with the old model", {})
    assert identity is not None
    faces = [
        NewFace(identity.id, OTHER_MODEL, v, 1.0, 1.0, "0" * 64, f"old{i}")
        for i, v in enumerate(vectors)
    ]
    assert store.add_faces(faces) == 3
    store.close()
    old = Gallery(
        SqliteStore.in_directory(folder),
        model_id=OTHER_MODEL,
        dim=DIM,
        index_setting="flat",
        use_gpu=False,
        poll_interval_s=None,
        saved_index=persisted.index_path(folder, OTHER_MODEL),
    )
    old.close()
    path = persisted.index_path(folder, OTHER_MODEL)
    assert path.is_file()
    return path, [identity.id, *(f.face_id for f in faces)], vectors  # type: ignore[misc]


def test_another_models_saved_index_holding_a_face_deleted_before_a_crash_is_removed(
    pristine, tmp_path
):
    folder = copy_gallery(pristine[0], tmp_path / "data")
    path, (identity_id, face_id, *_), vectors = _other_model_index(folder)
    store = SqliteStore.in_directory(folder)
    assert store.delete_face(identity_id, face_id) is not None
    assert store.erase()
    store.close()
    assert files_holding(folder, vectors[0]) == [path.name]
    open_served(folder).close()
    assert files_holding(folder, vectors[0]) == []


def test_deleting_a_face_of_another_model_removes_that_models_saved_index(pristine, tmp_path):
    folder = copy_gallery(pristine[0], tmp_path / "data")
    path, (identity_id, face_id, *_), vectors = _other_model_index(folder)
    gallery = open_served(folder)
    try:
        assert path.is_file()  # no deletion since it was saved: kept
        gallery.delete_face(identity_id, face_id)
        assert files_holding(folder, vectors[0]) == []
    finally:
        gallery.close()
