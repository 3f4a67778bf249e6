"""Bulk export, import and migration through `python -m service gallery ...`: a round trip
keeps every identity and face, a second import stores nothing twice, another model's embeddings
are refused before anything is written, and a migration into Milvus is verified."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gallery_support import backend_settings, clustered, probe_near
from synthetic_models import make_manifest_pack

from service.cli import main
from service.gallery.gallery import Gallery
from service.gallery.milvus import MilvusSearch, MilvusStore
from service.gallery.records import EmbeddingEnrol
from service.gallery.store import SqliteStore
from service.gallery.transfer import EXTERNAL_ID_PATTERN, ImportLine
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


def _store_of(backend: str, data_dir: Path, settings: dict[str, str], milvus_uri: str | None):
    if backend == "sqlite":
        return SqliteStore.in_directory(data_dir)
    return MilvusStore(milvus_uri, prefix=settings["milvus_collection_prefix"])


@pytest.mark.parametrize("backend", ["sqlite", "milvus"])
def test_import_checks_every_line_with_the_api_rules_and_lists_each_bad_line_before_writing(
    tmp_path, monkeypatch, pack, capsys, request, backend
):
    milvus_uri = request.getfixturevalue("milvus_uri") if backend == "milvus" else None
    model_id = load_pack(pack).model_id
    face = {"model": model_id, "embedding": [0.1] * DIM}
    good = {"external_id": "ada", "name": "Ada", "metadata": {"staff": 1}, **face}
    deep: dict = {}
    for _ in range(150):
        deep = {"k": deep}
    bad = [
        {**good, "external_id": "big", "metadata": {"blob": "x" * 3_000_000}},  # line 2
        {**good, "external_id": "blank", "name": "   "},  # line 3
        {**good, "external_id": "long", "name": "n" * 256},  # line 4
        {**good, "external_id": "deep", "metadata": deep},  # line 5
        {**good, "external_id": "html", "image_sha256": "<b>" + "x" * 28_000},  # line 6
        {**good, "external_id": "nan", "face_id": "nan-face", "quality": float("nan")},  # 7
        {**good, "external_id": "wide", "metadata": {"blob": "x" * 70_000}},  # line 8
        {**good, "external_id": "inf", "det_score": float("inf")},  # line 9
    ]
    file = tmp_path / "bad.jsonl"
    # Python's json writes NaN and Infinity, as other exporters may: they must be refused.
    file.write_text("".join(json.dumps(line) + "\n" for line in [good, *bad, good]))
    settings = backend_settings(backend, tmp_path / "target", milvus_uri)
    use(monkeypatch, pack, tmp_path / "target", **settings)

    assert main(["gallery", "import", str(file), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert "8 line(s) of the file cannot be imported" in message
    assert "Nothing was imported" in message
    for number, expected in {
        2: "metadata",
        3: "name must not be blank",
        4: "at most 200 characters",
        5: "nested",
        6: "image_sha256",
        7: "quality: Input should be a finite number",
        8: "metadata",
        9: "det_score: Input should be a finite number",
    }.items():
        reported = [row for row in message.splitlines() if row.startswith(f"  line {number}:")]
        assert len(reported) == 1 and expected in reported[0], (number, message)
    assert "line 1:" not in message and "line 10:" not in message
    store = _store_of(backend, tmp_path / "target", settings, milvus_uri)
    try:
        assert store.counts() == (0, 0)
    finally:
        store.close()


def test_import_stores_names_as_the_api_does_and_keeps_a_quality_it_was_given(
    tmp_path, monkeypatch, pack, capsys
):
    model_id = load_pack(pack).model_id
    line = {
        "external_id": "ada",
        "name": "  Ada  ",
        "model": model_id,
        "embedding": [0.1] * DIM,
        "face_id": "ada-1",
        "quality": 7.5,
        "image_sha256": "ab" * 32,
    }
    file = tmp_path / "one.jsonl"
    file.write_text(json.dumps(line) + "\n")
    use(monkeypatch, pack, tmp_path / "target")
    assert main(["gallery", "import", str(file), "--no-progress"]) == 0
    assert "1 new identities, 1 new faces, 0 already there" in capsys.readouterr().out
    store = SqliteStore.in_directory(tmp_path / "target")
    try:
        assert store.get_identity("ada").name == "Ada"  # stripped, like POST /identities
        [stored] = store.faces_of("ada")
        assert stored.quality == 7.5 and stored.image_sha256 == "ab" * 32
    finally:
        store.close()


def test_every_line_the_schemas_accept_fits_the_milvus_columns():
    """The import's column check is a guard: the API's own limits are inside the columns."""
    from service.gallery import milvus
    from service.gallery.records import MAX_METADATA_BYTES, MAX_NAME_LENGTH

    utf8_max_bytes_per_char = 4
    assert MAX_NAME_LENGTH * utf8_max_bytes_per_char <= milvus.NAME_LENGTH
    # Metadata is measured as ASCII-escaped JSON; stored unescaped, it is never longer.
    assert MAX_METADATA_BYTES <= milvus.METADATA_LENGTH
    assert ImportLine.model_fields["external_id"].metadata  # the id pattern caps it at 128
    assert "{0,127}" in EXTERNAL_ID_PATTERN and milvus.ID_LENGTH == 128
    assert EmbeddingEnrol.model_fields["model"].metadata[-1].max_length <= milvus.MODEL_LENGTH


def test_export_file_is_readable_by_its_owner_only(tmp_path, monkeypatch, pack, source):
    source_dir, _, _ = source
    use(monkeypatch, pack, source_dir)
    fresh, existing = tmp_path / "fresh.jsonl", tmp_path / "existing.jsonl"
    existing.write_text("old\n")
    existing.chmod(0o644)
    for out in (fresh, existing):
        assert main(["gallery", "export", "--out", str(out), "--no-progress"]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600, out
        assert len(out.read_text().splitlines()) == 6 * 3 + 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 320 KiB tmpfs, mounted for the test and unmounted after (needs root, as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=320k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


def test_import_on_a_full_disk_names_the_cause_and_leaves_no_identity_half_written(
    tmp_path, monkeypatch, pack, capsys, small_disk
):
    model_id = load_pack(pack).model_id
    rng = np.random.default_rng(3)
    faces_per_identity = 10
    people = [f"p{n:04d}" for n in range(400)]
    lines = [
        {
            "external_id": person,
            "name": f"person {person}",
            "model": model_id,
            "embedding": [float(v) for v in rng.normal(size=DIM)],
            "face_id": f"{person}-{k}",
        }
        for person in people
        for k in range(faces_per_identity)
    ]
    # The 11th identity has a face at the end of the file too: the batch holding it waits for
    # that last line, so it is the rest of the file, too big for the disk.
    split = "p0010"
    lines.append({**lines[100], "face_id": f"{split}-last", "embedding": [0.5] * DIM})
    assert lines[100]["external_id"] == split
    file = tmp_path / "many.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setattr("service.gallery.transfer.IMPORT_BATCH_FACES", 100)
    use(monkeypatch, pack, small_disk)

    assert main(["gallery", "import", str(file), "--no-progress"]) == 2
    errors = [row for row in capsys.readouterr().err.splitlines() if row.strip()]
    assert len(errors) == 1, errors  # one line, no traceback
    assert errors[0].startswith("faceverify: disk full while importing")
    assert "nothing from the failed batch was written" in errors[0]
    assert "re-run" in errors[0]
    store = SqliteStore.in_directory(small_disk)
    try:
        identities, faces = store.counts()
        assert identities == 10  # the first batch (100 faces) was written, the next failed
        assert store.get_identity(split) is None
        for identity in store.list_identities(len(people), 0):
            assert identity.face_count == faces_per_identity, identity
        assert faces == identities * faces_per_identity
    finally:
        store.close()


def test_import_into_milvus_writes_identities_with_their_faces_once(
    tmp_path, monkeypatch, pack, source, milvus_uri, capsys
):
    source_dir, ids, _ = source
    exported = tmp_path / "gallery.jsonl"
    use(monkeypatch, pack, source_dir)
    assert main(["gallery", "export", "--out", str(exported), "--no-progress"]) == 0
    target = backend_settings("milvus", tmp_path / "milvus-import", milvus_uri)
    use(monkeypatch, pack, tmp_path / "unused", **target)
    assert main(["gallery", "import", str(exported), "--no-progress"]) == 0
    assert "7 new identities, 18 new faces, 0 already there" in capsys.readouterr().out
    assert main(["gallery", "import", str(exported), "--no-progress"]) == 0
    assert "0 new identities, 0 new faces, 18 already there" in capsys.readouterr().out
    store = MilvusStore(milvus_uri, prefix=target["milvus_collection_prefix"])
    try:
        assert store.counts() == (7, 18)
        assert [len(store.faces_of(i)) for i in ids] == [3] * 6 + [0]
    finally:
        store.close()


def test_a_batch_that_fails_part_way_leaves_neither_its_identities_nor_its_faces(
    tmp_path, monkeypatch, pack, capsys
):
    """Without root (no tmpfs): the disk fills at the third face of the only batch."""
    model_id = load_pack(pack).model_id
    lines = [
        {"external_id": f"p{n}", "name": f"p{n}", "model": model_id, "embedding": [0.1 + n] * DIM}
        for n in range(5)
    ]
    file = tmp_path / "five.jsonl"
    file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    insert = SqliteStore._insert_face
    calls = []

    def fill_up(self, db, face):
        calls.append(face.identity_id)
        if len(calls) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        return insert(self, db, face)

    monkeypatch.setattr(SqliteStore, "_insert_face", fill_up)
    use(monkeypatch, pack, tmp_path / "target")
    assert main(["gallery", "import", str(file), "--no-progress"]) == 2
    [error] = [row for row in capsys.readouterr().err.splitlines() if row.strip()]
    assert error.startswith("faceverify: disk full while importing") and "lines 1 onwards" in error
    store = SqliteStore.in_directory(tmp_path / "target")
    try:
        assert store.counts() == (0, 0)
    finally:
        store.close()


def test_export_to_a_full_disk_says_so_and_leaves_no_partial_file(
    tmp_path, monkeypatch, pack, source, capsys, small_disk
):
    source_dir, _, _ = source
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as fill, pytest.raises(OSError):
        while True:
            fill.write(b"\0" * 65536)
    use(monkeypatch, pack, source_dir)
    out = small_disk / "gallery.jsonl"
    assert main(["gallery", "export", "--out", str(out), "--no-progress"]) == 2
    [error] = [row for row in capsys.readouterr().err.splitlines() if row.strip()]
    assert error.startswith(f"faceverify: disk full while writing the export {out}")
    assert not out.exists()
