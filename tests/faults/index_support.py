"""A small embedded gallery with a saved index, opened the way the app opens it, and ways to
damage that file: for tests/faults/test_saved_index.py.

Faces are random 128-d unit vectors (512 bytes each, like the campaign's gallery), one or two
per identity; a face's own embedding as the query finds that face at similarity 1, so every
answer has exactly one right identity. The gallery saves its index from 1 face on (the service
saves from 50,000), so each scenario opens in a fraction of a second.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from service.gallery import open_gallery, persisted
from service.gallery.gallery import Gallery
from service.gallery.index import IndexSetting
from service.gallery.interface import NewFace
from service.gallery.store import SqliteStore
from service.settings import Settings

MODEL = "faultmodel@0123456789ab"
OTHER_MODEL = "oldmodel@ba9876543210"
DIM = 128


@dataclass
class Enrolled:
    """What the store holds: per face (in index-id order) its identity and its embedding."""

    identity_ids: list[str]
    index_ids: np.ndarray
    vectors: np.ndarray


def enrol_random(data_dir: Path, identities: int, *, seed: int = 0) -> Enrolled:
    """Enrol `identities` identities with 2 faces each (the last with 1) straight into the
    store of `data_dir`."""
    rng = np.random.default_rng(seed)
    store = SqliteStore.in_directory(data_dir)
    try:
        owners: list[str] = []
        faces: list[NewFace] = []
        for number in range(identities):
            identity = store.create_identity(f"person {number}", {})
            assert identity is not None
            for _ in range(2 if number < identities - 1 else 1):
                vector = rng.standard_normal(DIM).astype(np.float32)
                faces.append(
                    NewFace(identity.id, MODEL, vector / np.linalg.norm(vector), 1.0, 1.0, "0" * 64)
                )
                owners.append(identity.id)
        assert store.add_faces(faces) == len(faces)
        snapshot = store.snapshot(MODEL)
    finally:
        store.close()
    return Enrolled(owners, snapshot.index_ids, snapshot.embeddings)


def open_served(data_dir: Path, index_setting: IndexSetting = "flat") -> Gallery:
    """The gallery as `open_gallery` opens it for the app (change log pruned, saved index
    next to the database), without the background poller."""
    settings = Settings(data_dir=data_dir, index_type=index_setting)
    pack = SimpleNamespace(
        model_id=MODEL, manifest=SimpleNamespace(recognizer=SimpleNamespace(embedding_size=DIM))
    )
    gallery = open_gallery(settings, pack)  # type: ignore[arg-type]
    gallery._sync.stop()  # the tests drive every catch-up themselves
    return gallery


def saved_file(data_dir: Path) -> Path:
    return persisted.index_path(data_dir, MODEL)


def wrong_answers(gallery: Gallery, enrolled: Enrolled) -> list[tuple[int, str, str]]:
    """Faces whose own embedding does not find their identity first: (face number, expected
    identity, answered identity or '' for none)."""
    ranked = gallery.identify(enrolled.vectors, top_k=1)
    wrong = []
    for number, (expected, candidates) in enumerate(
        zip(enrolled.identity_ids, ranked, strict=True)
    ):
        answered = candidates[0].identity_id if candidates else ""
        if answered != expected:
            wrong.append((number, expected, answered))
    return wrong


def assert_healthy_file(data_dir: Path, enrolled: Enrolled, damaged: bytes | None) -> None:
    """The saved file passes every check of a load, holds exactly the store's vectors under
    their ids, is readable by its owner only, and is not the damaged file."""
    path = saved_file(data_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    if damaged is not None:
        assert path.read_bytes() != damaged
    saved = persisted.load(path, model_id=MODEL, dim=DIM, use_gpu=False)
    assert saved is not None, "the rewritten file does not load"
    ids, vectors = saved.index.vectors_of(enrolled.index_ids)
    order = np.argsort(ids)
    assert np.array_equal(ids[order], enrolled.index_ids)
    assert np.array_equal(vectors[order], enrolled.vectors)


def vector_offset(data: bytes, vector: np.ndarray) -> int:
    """Where a face's embedding lies in a saved file (FAISS stores it verbatim)."""
    raw = vector.astype("<f4").tobytes()
    offset = data.find(raw)
    assert offset >= 0 and data.find(raw, offset + 1) < 0
    return offset


def files_holding(data_dir: Path, vector: np.ndarray) -> list[str]:
    """Files under `data_dir` whose bytes contain the embedding."""
    raw = vector.astype("<f4").tobytes()
    return [
        str(path.relative_to(data_dir))
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and raw in path.read_bytes()
    ]


def copy_gallery(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
