"""Bulk export, import and migration through `python -m service gallery ...`: a round trip
keeps every identity and face, a second import stores nothing twice, another model's embeddings
are refused before anything is written, and a migration into Milvus is verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gallery_support import backend_settings, clustered, probe_near
from synthetic_models import make_manifest_pack

from service.cli import main
from service.gallery.gallery import Gallery
from service.gallery.milvus import MilvusSearch, MilvusStore
from service.gallery.store import SqliteStore
from service.packs import load_pack

DIM = 32


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [], embedding_size=DIM)


def use(monkeypatch, pack: Path, data_dir: Path, **settings: str) -> None:
    """Point the command line's settings (read from the environment) at a gallery."""
    monkeypatch.setenv("FACEVERIFY_PACK_DIR", str(pack))
    monkeypatch.setenv("FACEVERIFY_DATA_DIR", str(data_dir))
    for name in ("GALLERY_BACKEND", "MILVUS_URI", "MILVUS_COLLECTION_PREFIX"):
        monkeypatch.delenv(f"FACEVERIFY_{name}", raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(f"FACEVERIFY_{name.upper()}", value)


def embedded_gallery(data_dir: Path, model_id: str) -> Gallery:
    return Gallery(
        SqliteStore.in_directory(data_dir),
        model_id=model_id,
        dim=DIM,
        use_gpu=False,
        poll_interval_s=None,
    )


@pytest.fixture
def source(tmp_path: Path, pack: Path) -> tuple[Path, list[str], np.ndarray]:
    """An embedded gallery: 6 identities x 3 faces, plus one identity without faces."""
    model_id = load_pack(pack).model_id
    centres, faces, labels = clustered(6, 3, DIM, seed=4)
    gallery = embedded_gallery(tmp_path / "source", model_id)
    try:
        ids = []
        for person in range(len(centres)):
            identity = gallery.create_identity(f"person {person}", {"n": person, "tags": ["a"]})
            for vector in faces[labels == person]:
                gallery.add_face(identity.id, vector, quality=5.0, det_score=0.9, image_sha256="")
            ids.append(identity.id)
        ids.append(gallery.create_identity("nobody enrolled", {}).id)
    finally:
        gallery.close()
    return tmp_path / "source", ids, centres


def test_export_then_import_round_trips_and_a_second_import_adds_nothing(
    tmp_path, monkeypatch, pack, source, capsys
):
    source_dir, ids, centres = source
    exported = tmp_path / "gallery.jsonl"
    use(monkeypatch, pack, source_dir)
    assert main(["gallery", "export", "--out", str(exported), "--no-progress"]) == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(lines) == 6 * 3 + 1
    assert {line["external_id"] for line in lines} == set(ids)
    assert lines[0]["metadata"] == {"n": 0, "tags": ["a"]} and len(lines[0]["embedding"]) == DIM

    use(monkeypatch, pack, tmp_path / "copy")
    assert main(["gallery", "import", str(exported), "--no-progress"]) == 0
    assert "7 new identities, 18 new faces, 0 already there" in capsys.readouterr().out
    assert main(["gallery", "import", str(exported), "--no-progress"]) == 0
    assert "0 new identities, 0 new faces, 18 already there" in capsys.readouterr().out

    copy = embedded_gallery(tmp_path / "copy", load_pack(pack).model_id)
    try:
        assert copy.store.counts() == (7, 18)
        assert [i.id for i in copy.list_identities(10, 0)[0]] == ids
        results = copy.identify(np.stack([probe_near(c, seed=1) for c in centres]), top_k=1)
        assert [r[0].identity_id for r in results] == ids[:6]
    finally:
        copy.close()


def test_import_of_another_models_embeddings_is_refused_before_any_write(
    tmp_path, monkeypatch, pack, capsys
):
    model_id = load_pack(pack).model_id
    vector = [0.1] * DIM
    lines = [
        {"external_id": "ada", "name": "Ada", "model": model_id, "embedding": vector},
        {"external_id": "bob", "name": "Bob", "model": "other@0123456789ab", "embedding": vector},
    ]
    file = tmp_path / "mixed.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({**lines[0], "embedding": vector[:-1]}) + "\n")
    use(monkeypatch, pack, tmp_path / "target")
    assert main(["gallery", "import", str(file), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert "line 2" in message and "other@0123456789ab" in message and model_id in message
    assert "Nothing was imported" in message
    assert main(["gallery", "import", str(short), "--no-progress"]) == 2
    assert f"must have {DIM} finite values" in capsys.readouterr().err
    store = SqliteStore.in_directory(tmp_path / "target")
    try:
        assert store.counts() == (0, 0)
    finally:
        store.close()


def test_migrate_to_milvus_copies_everything_and_verifies_counts(
    tmp_path, monkeypatch, pack, source, milvus_uri, capsys
):
    source_dir, ids, centres = source
    target = backend_settings("milvus", tmp_path / "milvus", milvus_uri)
    use(
        monkeypatch, pack, source_dir, **{k: v for k, v in target.items() if k != "gallery_backend"}
    )
    assert main(["gallery", "migrate", "--to", "milvus", "--no-progress"]) == 0
    assert "migrated and verified: 7 identities" in capsys.readouterr().out
    assert main(["gallery", "migrate", "--to", "milvus", "--no-progress"]) == 0  # idempotent

    model_id = load_pack(pack).model_id
    store = MilvusStore(milvus_uri, prefix=target["milvus_collection_prefix"])
    gallery = Gallery(
        store,
        model_id=model_id,
        dim=DIM,
        search=MilvusSearch(store, model_id=model_id, dim=DIM),
    )
    try:
        assert store.counts() == (7, 18)
        assert [i.id for i in gallery.list_identities(10, 0)[0]] == ids
        results = gallery.identify(np.stack([probe_near(c, seed=1) for c in centres]), top_k=1)
        assert [r[0].identity_id for r in results] == ids[:6]
    finally:
        gallery.close()
