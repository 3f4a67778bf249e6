"""`python -m service gallery enrol SOURCE`: a folder of people (or a CSV) becomes identities
with one face per usable photo, by the rules of `POST /identities/{id}/faces`; a re-run adds
nothing; every refused photo is in the report with its stable code; both backends."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from gallery_support import backend_settings, noise_photo
from synthetic_models import SyntheticFace, make_manifest_pack

from service.cli import main
from service.errors import ErrorCode, ServiceError
from service.gallery.bulk import face_id_of, find_photos
from service.gallery.interface import NewFace
from service.gallery.milvus import MilvusStore
from service.gallery.store import SqliteStore
from service.packs import load_pack

DIM = 16
FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)
OTHER_FACE = SyntheticFace.from_box((420.0, 200.0, 560.0, 360.0), score=0.9)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """A pack whose detector finds one face in every photo."""
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=DIM)


def use(monkeypatch, pack: Path, data_dir: Path, **settings: str) -> None:
    """Point the command line's settings (read from the environment) at a gallery."""
    monkeypatch.setenv("FACEVERIFY_PACK_DIR", str(pack))
    monkeypatch.setenv("FACEVERIFY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FACEVERIFY_ENROL_QUALITY", "off")  # noise photos grade `low`
    for name in ("GALLERY_BACKEND", "MILVUS_URI", "MILVUS_COLLECTION_PREFIX"):
        monkeypatch.delenv(f"FACEVERIFY_{name}", raising=False)
    monkeypatch.delenv("FACEVERIFY_REQUIRE_SINGLE_FACE", raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(f"FACEVERIFY_{name.upper()}", value)


def people_folder(root: Path, photos_per_person: dict[str, int], seed: int = 0) -> Path:
    """`root/<person>/<n>.png`, each photo a different noise image."""
    for person, count in photos_per_person.items():
        (root / person).mkdir(parents=True)
        for n in range(count):
            seed += 1
            (root / person / f"{n}.png").write_bytes(noise_photo(seed, size=320))
    return root


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def open_backend(backend: str, data_dir: Path, settings: dict[str, str]):
    if backend == "sqlite":
        return SqliteStore.in_directory(data_dir)
    return MilvusStore(settings["milvus_uri"], prefix=settings["milvus_collection_prefix"])


def summary_of(out: str) -> str:
    return [line for line in out.splitlines() if line.startswith("photos ")][-1]


@pytest.mark.parametrize("backend", ["sqlite", "milvus"])
def test_a_folder_of_people_becomes_one_identity_each_and_a_rerun_adds_nothing(
    tmp_path, monkeypatch, pack, capsys, request, backend
):
    milvus_uri = request.getfixturevalue("milvus_uri") if backend == "milvus" else None
    settings = backend_settings(backend, tmp_path / "data", milvus_uri)
    use(monkeypatch, pack, tmp_path / "data", **settings)
    source = people_folder(tmp_path / "people", {"ada": 3, "grace.h": 2, "E-1815": 1})
    report = tmp_path / "refused.csv"
    argv = ["gallery", "enrol", str(source), "--report", str(report), "--no-progress"]

    assert main([*argv, "--batch-size", "2"]) == 0
    first = summary_of(capsys.readouterr().out)
    assert first.startswith(
        "photos 6, enrolled 6, already there 0, refused 0, identities created 3,"
    )
    assert read_report(report) == []  # a header, no rows
    store = open_backend(backend, tmp_path / "data", settings)
    try:
        assert store.counts() == (3, 6)
        assert store.get_identity("grace.h").name == "grace.h"
        faces = store.faces_of("ada")
        model_id = load_pack(pack).model_id
        shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (source / "ada").iterdir()}
        assert {face.image_sha256 for face in faces} == shas
        assert {face.model_id for face in faces} == {model_id}
        assert {face.face_id for face in faces} == {face_id_of("ada", model_id, s) for s in shas}
    finally:
        store.close()

    assert main(argv) == 0
    again = summary_of(capsys.readouterr().out)
    assert again.startswith(
        "photos 6, enrolled 0, already there 6, refused 0, identities created 0"
    )
    store = open_backend(backend, tmp_path / "data", settings)
    try:
        assert store.counts() == (3, 6)
    finally:
        store.close()


def test_each_refused_photo_is_reported_with_its_code_and_no_empty_identity_is_left(
    tmp_path, monkeypatch, pack, capsys
):
    use(monkeypatch, pack, tmp_path / "data")
    source = people_folder(tmp_path / "people", {"ada": 2})
    (source / "bad name").mkdir()
    (source / "bad name" / "0.png").write_bytes(noise_photo(99, size=320))
    (source / "_hidden").mkdir()
    (source / "_hidden" / "0.png").write_bytes(noise_photo(98, size=320))
    (source / "broken").mkdir()
    (source / "broken" / "0.jpg").write_bytes(b"this is not a jpeg")
    (source / "ada" / "notes.txt").write_text("not a photo")  # skipped, not refused
    (source / "loose.jpg").write_bytes(noise_photo(97, size=320))

    assert main(["gallery", "enrol", str(source), "--no-progress"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary.startswith(
        "photos 6, enrolled 2, already there 0, refused 4 (invalid_image 1, validation_error 3), "
        "identities created 1,"
    )
    report = tmp_path / "people-refused.csv"  # default: beside the input
    rows = {Path(row["path"]).relative_to(source).as_posix(): row for row in read_report(report)}
    assert {path: row["code"] for path, row in rows.items()} == {
        "bad name/0.png": "validation_error",
        "_hidden/0.png": "validation_error",
        "broken/0.jpg": "invalid_image",
        "loose.jpg": "validation_error",
    }
    assert "not a valid identity id" in rows["bad name/0.png"]["message"]
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        # `broken` had no usable photo: it was never created, rather than left without faces.
        assert [identity.id for identity in store.list_identities(10, 0)] == ["ada"]
    finally:
        store.close()


def test_photos_of_several_faces_are_refused_as_multiple_faces_when_the_rule_is_on(
    tmp_path, monkeypatch, capsys
):
    two_faces = make_manifest_pack(tmp_path / "pack2", [FACE, OTHER_FACE], embedding_size=DIM)
    source = people_folder(tmp_path / "people", {"ada": 2})
    use(monkeypatch, two_faces, tmp_path / "single", require_single_face="true")
    assert main(["gallery", "enrol", str(source), "--no-progress"]) == 0
    assert "enrolled 0, already there 0, refused 2 (multiple_faces 2)" in capsys.readouterr().out
    assert {row["code"] for row in read_report(tmp_path / "people-refused.csv")} == {
        "multiple_faces"
    }
    use(monkeypatch, two_faces, tmp_path / "largest", require_single_face="false")
    assert main(["gallery", "enrol", str(source), "--no-progress"]) == 0
    assert "enrolled 2, already there 0, refused 0" in capsys.readouterr().out


def test_a_photo_enrolled_before_through_the_api_is_already_there(
    tmp_path, monkeypatch, pack, capsys
):
    use(monkeypatch, pack, tmp_path / "data")
    source = people_folder(tmp_path / "people", {"ada": 2})
    photo = sorted((source / "ada").iterdir())[0]
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        store.create_identity("Ada Lovelace", {}, identity_id="ada")
        store.add_face(
            NewFace(
                identity_id="ada",
                model_id=load_pack(pack).model_id,
                embedding=np.eye(DIM, dtype=np.float32)[0],
                quality=1.0,
                det_score=0.9,
                image_sha256=hashlib.sha256(photo.read_bytes()).hexdigest(),
            )
        )
    finally:
        store.close()
    assert main(["gallery", "enrol", str(source), "--no-progress"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary.startswith(
        "photos 2, enrolled 1, already there 1, refused 0, identities created 0"
    )
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        assert store.counts() == (1, 2)
        assert store.get_identity("ada").name == "Ada Lovelace"  # an existing identity is kept
    finally:
        store.close()


def test_a_csv_names_people_and_gives_paths_relative_to_itself(tmp_path, monkeypatch, pack, capsys):
    use(monkeypatch, pack, tmp_path / "data")
    people_folder(tmp_path / "photos", {"a": 2, "b": 1})
    listing = tmp_path / "people.csv"
    listing.write_text(
        "person,path,name\n"
        "emp-1,photos/a/0.png,Ada Lovelace\n"
        "emp-1,photos/a/1.png,Ada Lovelace\n"
        "emp-1,photos/a/1.png,Ada Lovelace\n"  # the same photo twice: enrolled once
        "emp-2,photos/b/0.png\n"
        "emp 3,photos/b/0.png,Bad Id\n"
        "emp-4,photos/missing.png,Nobody\n",
        encoding="utf-8",
    )
    photos, refused = find_photos(listing)
    assert [photo.person for photo in photos] == ["emp-1"] * 3 + ["emp-2", "emp-4"]
    assert [refusal.person for refusal in refused] == ["emp 3"]

    assert main(["gallery", "enrol", str(listing), "--no-progress"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary.startswith(
        "photos 6, enrolled 3, already there 1, refused 2 (invalid_image 1, validation_error 1), "
        "identities created 2,"
    )
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        assert store.get_identity("emp-1").name == "Ada Lovelace"
        assert store.get_identity("emp-2").name == "emp-2"  # no name column: the id
        assert store.counts() == (2, 3)
    finally:
        store.close()
    assert {row["code"] for row in read_report(tmp_path / "people-refused.csv")} == {
        "invalid_image",
        "validation_error",
    }


def test_a_missing_source_fails_in_one_line(tmp_path, monkeypatch, pack, capsys):
    use(monkeypatch, pack, tmp_path / "data")
    assert main(["gallery", "enrol", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "no folder or CSV file" in capsys.readouterr().err


def test_a_batch_that_fails_part_way_leaves_no_identity_without_its_faces_and_a_rerun_completes(
    tmp_path, monkeypatch, pack, capsys
):
    """The disk fills at the third face of the first batch (two people, two photos each)."""
    use(monkeypatch, pack, tmp_path / "data")
    source = people_folder(tmp_path / "people", {"p0": 2, "p1": 2, "p2": 2})
    insert = SqliteStore._insert_face
    calls = []

    def fill_up(self, db, face):
        calls.append(face.identity_id)
        if len(calls) == 3:
            raise ServiceError(ErrorCode.INSUFFICIENT_STORAGE, "the disk is full")
        return insert(self, db, face)

    monkeypatch.setattr(SqliteStore, "_insert_face", fill_up)
    argv = ["gallery", "enrol", str(source), "--no-progress", "--batch-size", "4", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [error] = [row for row in err.splitlines() if row.startswith("faceverify:")]
    assert error.startswith("faceverify: insufficient_storage: the disk is full"), err
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        assert store.counts() == (0, 0)  # p1 was not created without its faces, nor p0
    finally:
        store.close()

    monkeypatch.setattr(SqliteStore, "_insert_face", insert)
    assert main(argv) == 0
    assert summary_of(capsys.readouterr().out).startswith(
        "photos 6, enrolled 6, already there 0, refused 0, identities created 3,"
    )


def test_a_link_back_to_a_parent_folder_is_walked_once_not_for_ever(tmp_path):
    source = people_folder(tmp_path / "people", {"ada": 1})
    (source / "ada" / "again").symlink_to(source, target_is_directory=True)
    photos, refused = find_photos(source)
    assert [(photo.person, photo.path.name) for photo in photos] == [("ada", "0.png")]
    assert refused == []


def test_a_file_over_the_upload_limit_is_refused_as_payload_too_large(
    tmp_path, monkeypatch, pack, capsys
):
    use(monkeypatch, pack, tmp_path / "data", max_upload_bytes=str(1 << 19))
    source = people_folder(tmp_path / "people", {"ada": 1})
    (source / "ada" / "huge.png").write_bytes(b"\x89PNG" + bytes(1 << 20))
    assert main(["gallery", "enrol", str(source), "--no-progress"]) == 0
    rows = read_report(tmp_path / "people-refused.csv")
    assert [(Path(row["path"]).name, row["code"]) for row in rows] == [
        ("huge.png", "payload_too_large")
    ]


# --- the shared photos, real pack ------------------------------------------------------------


def shared_people(images: Path, into: Path) -> Path:
    """A people folder of links to the shared photos: `id01..id13`, the six face_recognition
    people, and each `_multi/` folder as a person of its own (`deepface_multi`, `fr_multi`)."""
    into.mkdir()
    for folder in sorted((images / "deepface").glob("id[0-9]*")):
        (into / folder.name).symlink_to(folder, target_is_directory=True)
    for folder in sorted((images / "face_recognition").iterdir()):
        if folder.is_dir() and not folder.name.startswith("_"):
            (into / folder.name).symlink_to(folder, target_is_directory=True)
    (into / "deepface_multi").symlink_to(images / "deepface" / "_multi")
    (into / "fr_multi").symlink_to(images / "face_recognition" / "_multi")
    return into


# What the shared pack finds (det_500m): the group photos, and three deepface photos with
# people in the background; the mirror reflection shows one face and is enrolled.
SHARED_MULTIPLE_FACES = {
    "deepface_multi/couple.jpg",
    "deepface_multi/selfie-many-people.jpg",
    "fr_multi/kit_with_rose.jpg",
    "fr_multi/obama_and_biden.jpg",
    "fr_multi/two_people.jpg",
    "id02/img54.jpg",
    "id05/img59.jpg",
    "id05/img62.jpg",
}


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_the_shared_photo_folders_become_a_gallery_with_the_expected_counts(
    tmp_path, monkeypatch, assets_dir, real_pack_dir, capsys, pool
):
    source = shared_people(assets_dir / "images", tmp_path / "people")
    photos, refused = find_photos(source)
    assert len(photos) == 86 and refused == []  # 61 + 3 deepface, 19 + 3 face_recognition
    use(monkeypatch, real_pack_dir, tmp_path / "data", require_single_face="true")
    monkeypatch.setenv("FACEVERIFY_ENROL_QUALITY", "medium")  # the service's default policy
    argv = ["gallery", "enrol", str(source), "--no-progress", "--workers", "2", "--pool", pool]

    assert main(argv) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary.startswith(
        "photos 86, enrolled 78, already there 0, refused 8 (multiple_faces 8), "
        "identities created 20,"
    )
    rows = read_report(tmp_path / "people-refused.csv")
    refused_paths = {Path(row["path"]).relative_to(source).as_posix() for row in rows}
    assert refused_paths == SHARED_MULTIPLE_FACES
    store = SqliteStore.in_directory(tmp_path / "data")
    try:
        assert store.counts() == (20, 78)
        for folder in source.iterdir():
            expected = sum(
                1
                for photo in folder.iterdir()
                if f"{folder.name}/{photo.name}" not in SHARED_MULTIPLE_FACES
            )
            assert len(store.faces_of(folder.name)) == expected, folder.name
    finally:
        store.close()

    assert main(argv) == 0  # the refused photos are tried again, and refused again
    assert summary_of(capsys.readouterr().out).startswith(
        "photos 86, enrolled 0, already there 78, refused 8 (multiple_faces 8), "
        "identities created 0,"
    )
