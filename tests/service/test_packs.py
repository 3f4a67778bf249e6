"""Pack loading: manifests are verified against the files, InsightFace folders are read by
their ONNX signatures, and every refusal is one line that says what to do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from synthetic_models import (
    DECOY_FILES,
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    SyntheticFace,
    make_decoy_model,
    make_detector,
    make_manifest_pack,
    make_pack_folder,
    make_recognizer,
)

from service.errors import PackError
from service.packs import (
    DEFAULT_THRESHOLD,
    MANIFEST_NAME,
    Catalogue,
    CatalogueEntry,
    CatalogueFile,
    arcface_input_normalisation,
    classify_model,
    load_catalogue,
    load_pack,
    read_onnx_signature,
    sha256_file,
)

FACE = SyntheticFace.from_box((100.0, 100.0, 300.0, 340.0))
EMPTY_CATALOGUE = Catalogue(packs=[])


def pack_error(directory: Path, **kwargs) -> str:
    """Load a pack that must fail; return the message after checking it is one line."""
    with pytest.raises(PackError) as raised:
        load_pack(directory, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = manifest
        for parent in parents:
            node = node[parent]
        node[key] = value
    path.write_text(json.dumps(manifest))


# --- packs with a manifest -----------------------------------------------------------------


def test_manifest_pack_loads_with_verified_checksums(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=16, threshold=0.5)

    pack = load_pack(directory)

    recognizer_sha = sha256_file(directory / RECOGNIZER_FILE)
    assert pack.name == "synthetic"
    assert pack.detector_path == directory / DETECTOR_FILE
    assert pack.recognizer_path == directory / RECOGNIZER_FILE
    assert pack.manifest.recognizer.embedding_size == 16
    assert pack.manifest.threshold == 0.5
    assert pack.model_id == f"synthetic@{recognizer_sha[:12]}"


def test_manifest_without_checksums_gets_them_computed_for_the_model_id(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack", with_checksums=False)

    pack = load_pack(directory)

    assert pack.manifest.recognizer.sha256 == sha256_file(directory / RECOGNIZER_FILE)
    assert pack.manifest.detector.sha256 == sha256_file(directory / DETECTOR_FILE)


def test_missing_file_named_in_manifest_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    (directory / RECOGNIZER_FILE).unlink()

    message = pack_error(directory)

    assert RECOGNIZER_FILE in message and "missing" in message


def test_file_outside_the_pack_folder_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    make_recognizer(tmp_path / "elsewhere.onnx")
    edit_manifest(directory, recognizer__file="../elsewhere.onnx", recognizer__sha256=None)

    assert "not a file directly inside the pack folder" in pack_error(directory)


def test_bad_checksum_is_refused_unless_verification_is_off(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    make_recognizer(directory / RECOGNIZER_FILE, seed=7)  # same shape, other weights

    message = pack_error(directory)
    pack = load_pack(directory, verify_checksums=False)

    assert "sha256" in message and "download or export it again" in message
    assert (
        pack.manifest.recognizer.sha256
        == json.loads((directory / MANIFEST_NAME).read_text())["recognizer"]["sha256"]
    )


def test_truncated_onnx_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack", with_checksums=False)
    path = directory / RECOGNIZER_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    message = pack_error(directory)

    assert "not a readable ONNX model" in message and RECOGNIZER_FILE in message


def test_manifest_embedding_size_disagreeing_with_the_model_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack", embedding_size=8, manifest_embedding_size=512)

    message = pack_error(directory)

    assert "outputs 8-d embeddings" in message and "embedding_size 512" in message


def test_manifest_input_size_disagreeing_with_the_model_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    edit_manifest(directory, recognizer__input_size=128)

    assert "takes 112x112 crops" in pack_error(directory)


def test_manifest_naming_a_recognizer_as_detector_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    edit_manifest(directory, detector__file=RECOGNIZER_FILE, detector__sha256=None)

    assert "does not look like an SCRFD detector" in pack_error(directory)


def test_invalid_manifest_is_refused_with_the_field_at_fault(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    edit_manifest(directory, threshold="high")

    message = pack_error(directory)

    assert "threshold" in message and "not a valid pack manifest" in message


def test_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    directory = make_manifest_pack(tmp_path / "pack")
    (directory / MANIFEST_NAME).write_text("{not json")

    assert "not readable JSON" in pack_error(directory)


# --- InsightFace folders -------------------------------------------------------------------


def test_insightface_folder_finds_detector_and_recognizer_and_ignores_decoys(
    tmp_path: Path,
) -> None:
    directory = make_pack_folder(tmp_path / "my_pack", [FACE], embedding_size=12, with_decoys=True)

    pack = load_pack(directory, catalogue=EMPTY_CATALOGUE)

    assert pack.detector_path.name == DETECTOR_FILE
    assert pack.recognizer_path.name == RECOGNIZER_FILE
    assert sorted(pack.ignored_files) == sorted(DECOY_FILES)
    assert pack.name == "my_pack"
    manifest = pack.manifest
    assert manifest.recognizer.embedding_size == 12
    assert (manifest.recognizer.input_size, manifest.detector.input_size) == (112, 640)
    assert (manifest.recognizer.mean, manifest.recognizer.std) == (127.5, 127.5)
    assert (manifest.detector.mean, manifest.detector.std) == (127.5, 128.0)
    assert manifest.threshold == DEFAULT_THRESHOLD
    assert pack.model_id == f"my_pack@{sha256_file(pack.recognizer_path)[:12]}"


def test_decoys_are_classified_as_landmark_and_attribute_models(tmp_path: Path) -> None:
    roles = {
        name: classify_model(read_onnx_signature(make_decoy_model(tmp_path / name, kind)))
        for name, kind in DECOY_FILES.items()
    }
    assert roles == {
        "1k3d68.onnx": "landmark",
        "2d106det.onnx": "landmark",
        "genderage.onnx": "attribute",
    }


def test_recognizer_normalising_inside_its_graph_gets_raw_pixels(tmp_path: Path) -> None:
    inside = make_recognizer(tmp_path / "inside.onnx", normalisation_in_graph=True)
    plain = make_recognizer(tmp_path / "plain.onnx")

    assert arcface_input_normalisation(read_onnx_signature(inside)) == (0.0, 1.0)
    assert arcface_input_normalisation(read_onnx_signature(plain)) == (127.5, 127.5)


def test_known_recognizer_gets_the_catalogue_threshold_and_name(tmp_path: Path) -> None:
    directory = make_pack_folder(tmp_path / "renamed_folder", [FACE])
    entry = CatalogueEntry(
        name="known_pack",
        files=[
            CatalogueFile(
                name="x.onnx", role="recognizer", sha256=sha256_file(directory / RECOGNIZER_FILE)
            )
        ],
        embedding_size=8,
        threshold=0.42,
        threshold_source="measured",
        licence="test",
    )

    pack = load_pack(directory, catalogue=Catalogue(packs=[entry]))

    assert (pack.name, pack.manifest.threshold, pack.manifest.licence) == (
        "known_pack",
        0.42,
        "test",
    )


def test_symbolic_embedding_size_is_read_by_running_the_model(tmp_path: Path) -> None:
    directory = make_pack_folder(tmp_path / "pack", embedding_size=24)
    path = directory / RECOGNIZER_FILE
    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "embedding_dim"
    onnx.save(model, str(path))

    pack = load_pack(directory, catalogue=EMPTY_CATALOGUE)

    assert pack.manifest.recognizer.embedding_size == 24


def test_two_recognizers_are_refused_naming_both(tmp_path: Path) -> None:
    directory = make_pack_folder(tmp_path / "pack")
    make_recognizer(directory / "second_recognizer.onnx", embedding_size=4)

    message = pack_error(directory, catalogue=EMPTY_CATALOGUE)

    assert "exactly one face detector and one recognizer" in message
    assert RECOGNIZER_FILE in message and "second_recognizer.onnx" in message


def test_folder_without_a_recognizer_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "pack"
    make_detector(directory / "det.onnx", [FACE])
    make_decoy_model(directory / "genderage.onnx", "genderage")

    message = pack_error(directory, catalogue=EMPTY_CATALOGUE)

    assert "recognizers: none" in message and "genderage.onnx (attribute)" in message


def test_detector_without_keypoints_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "pack"
    make_detector(directory / "det.onnx", [FACE], with_keypoints=False)
    make_recognizer(directory / "rec.onnx")

    assert "without landmark outputs" in pack_error(directory, catalogue=EMPTY_CATALOGUE)


def test_truncated_model_in_insightface_folder_is_refused(tmp_path: Path) -> None:
    directory = make_pack_folder(tmp_path / "pack", with_decoys=True)
    decoy = directory / "genderage.onnx"
    decoy.write_bytes(decoy.read_bytes()[:100])

    assert "genderage.onnx is not a readable ONNX model" in pack_error(directory)


def test_folder_named_like_a_catalogued_pack_must_hold_its_files(tmp_path: Path) -> None:
    directory = tmp_path / "scrfd500m_mbf128"  # catalogued, with known sha256s
    make_detector(directory / "det_500m.onnx", [FACE])
    make_recognizer(directory / "mobilefacenet_128d.onnx", embedding_size=128)

    message = pack_error(directory, catalogue=load_catalogue())
    loaded = load_pack(directory, verify_checksums=False, catalogue=load_catalogue())

    assert "det_500m.onnx has sha256" in message and "catalogue's scrfd500m_mbf128" in message
    assert loaded.manifest.threshold == DEFAULT_THRESHOLD  # unknown recognizer


# --- the folder itself ---------------------------------------------------------------------


def test_missing_folder_says_how_to_get_a_pack(tmp_path: Path) -> None:
    message = pack_error(tmp_path / "nowhere")

    assert message.startswith(f"no model pack at {tmp_path / 'nowhere'}")
    assert "fetch-models" in message and "FACEVERIFY_PACK_DIR" in message


def test_file_instead_of_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pack.onnx"
    path.write_bytes(b"")

    assert "is a file, not a model pack folder" in pack_error(path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    message = pack_error(tmp_path / "empty")

    assert "holds no ONNX model" in message and "FACEVERIFY_PACK_DIR" in message


def test_pack_unzipped_one_folder_too_deep_points_at_the_right_folder(tmp_path: Path) -> None:
    make_pack_folder(tmp_path / "antelopev2" / "antelopev2")

    message = pack_error(tmp_path / "antelopev2")

    assert f"but {tmp_path / 'antelopev2' / 'antelopev2'} does" in message


# --- the real shared pack ------------------------------------------------------------------


def test_real_shared_pack_loads_with_catalogue_threshold(real_pack_dir: Path) -> None:
    pack = load_pack(real_pack_dir)

    assert pack.detector_path.name == "det_500m.onnx"
    assert pack.recognizer_path.name == "mobilefacenet_128d.onnx"
    assert pack.manifest.recognizer.embedding_size == 128
    assert pack.manifest.recognizer.input_size == 112
    assert pack.manifest.threshold == 0.40
    assert pack.model_id == "scrfd500m_mbf128@0c9ad2a83969"


# --- catalogue and hashing -----------------------------------------------------------------


def test_catalogue_lists_the_known_packs_with_one_detector_and_one_recognizer() -> None:
    catalogue = load_catalogue()

    assert {"buffalo_l", "buffalo_s", "antelopev2", "scrfd500m_mbf128"} <= set(catalogue.names())
    for entry in catalogue.packs:
        roles = [item.role for item in entry.files]
        assert roles.count("detector") == 1 and roles.count("recognizer") == 1, entry.name
        assert entry.file_with_role("recognizer").sha256, entry.name
        if entry.url:
            assert entry.url.endswith(f"/{entry.name}.zip") and entry.archive_sha256
            assert "non-commercial" in entry.licence


def test_catalogue_hashes_of_the_shared_pack_match_the_assets_manifest(assets_dir: Path) -> None:
    published = {
        Path(item["file"]).name: item["sha256"]
        for item in json.loads((assets_dir / "manifest.json").read_text())
        if item["file"].startswith("models/scrfd500m_mbf128/")
    }
    entry = load_catalogue().get("scrfd500m_mbf128")

    assert {item.name: item.sha256 for item in entry.files} == published


def test_catalogue_with_a_repeated_name_is_refused(tmp_path: Path) -> None:
    catalogue = json.loads(load_catalogue().model_dump_json())
    catalogue["packs"].append(catalogue["packs"][0])
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(catalogue))

    with pytest.raises(PackError, match="repeated: buffalo_l"):
        load_catalogue(path)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # spans several read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
