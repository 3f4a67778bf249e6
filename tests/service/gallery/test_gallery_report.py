"""The gallery report: a person enrolled under two identity ids is found as a suspected duplicate
with its score and faces (on both backends), nothing is found when everyone is enrolled once,
the route needs `gallery:read`, the PNG is a PNG, and `gallery report` prints a readable report.

Faces are planted as embeddings (POST /identities/{id}/embeddings) at the synthetic pack's 32
dimensions: different identities score about 0 +- 0.18, far under the strict threshold (the
pack's 0.5 + 0.15: the synthetic pack is not calibrated at FMR 1e-5).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from gallery_support import backend_settings, clustered, open_test_gallery, unit
from synthetic_models import SyntheticFace, make_manifest_pack

from service.app import create_app
from service.cli import main
from service.gallery.report import (
    DUPLICATE_MARGIN,
    ReportOptions,
    build_report,
    format_text,
    histogram,
    strict_threshold,
)
from service.keys import create_key
from service.packs.thresholds import Calibration, FmrThreshold
from service.settings import Settings

DIM = 32
THRESHOLD = 0.5
STRICT = THRESHOLD + DUPLICATE_MARGIN
PEOPLE = 10
FACES_EACH = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["sqlite", "milvus"])
def app_client(request, tmp_path: Path):
    """`with app_client(**settings) as client:` on the gallery backend of the parameter."""
    from fastapi.testclient import TestClient

    milvus_uri = request.getfixturevalue("milvus_uri") if request.param == "milvus" else None
    pack = make_manifest_pack(
        tmp_path / "pack",
        [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)],
        embedding_size=DIM,
        threshold=THRESHOLD,
    )

    @contextmanager
    def make(**overrides):
        data_dir = overrides.setdefault("data_dir", tmp_path / "data")
        for name, value in backend_settings(request.param, data_dir, milvus_uri).items():
            overrides.setdefault(name, value)
        with TestClient(create_app(Settings(pack_dir=pack, _env_file=None, **overrides))) as c:
            yield c

    make.pack = pack
    return make


def _plant(client, names: list[str], faces: list[np.ndarray]) -> dict[str, dict]:
    """Create one identity per name with its faces; {name: {"id", "faces": [face ids]}}."""
    model = client.get("/readyz").json()["model"]
    planted: dict[str, dict] = {}
    for name, vectors in zip(names, faces, strict=True):
        identity = client.post("/identities", json={"name": name}).json()["id"]
        face_ids = []
        for vector in vectors:
            response = client.post(
                f"/identities/{identity}/embeddings",
                json={"embedding": [float(v) for v in vector], "model": model},
            )
            assert response.status_code == 201, response.text
            face_ids.append(response.json()["face_id"])
        planted[name] = {"id": identity, "faces": face_ids}
    return planted


def _people(seed: int = 7) -> tuple[list[str], list[np.ndarray]]:
    _, faces, labels = clustered(PEOPLE, FACES_EACH, DIM, noise=0.3, seed=seed)
    return [f"person {i}" for i in range(PEOPLE)], [faces[labels == i] for i in range(PEOPLE)]


def test_report_finds_a_person_enrolled_under_two_ids_with_score_and_faces(app_client):
    names, faces = _people()
    rng = np.random.default_rng(1)
    again = unit(faces[3][0] + 0.15 * rng.standard_normal(DIM) / math.sqrt(DIM))
    expected = float(np.max(faces[3] @ again))
    with app_client() as client:
        planted = _plant(client, [*names, "person 3 again"], [*faces, again[None, :]])
        response = client.get("/gallery/report")
        assert response.status_code == 200, response.text
        report = response.json()

    duplicates = report["duplicates"]
    assert duplicates["min_score"] == pytest.approx(STRICT)
    assert expected > STRICT
    assert duplicates["faces_searched"] == PEOPLE * FACES_EACH + 1 and not duplicates["sampled"]
    [pair] = duplicates["pairs"]
    original, copy = planted["person 3"], planted["person 3 again"]
    assert {pair["identity_a"], pair["identity_b"]} == {original["id"], copy["id"]}
    assert pair["score"] == pytest.approx(expected, abs=1e-4)
    faces_of = {pair["identity_a"]: pair["face_a"], pair["identity_b"]: pair["face_b"]}
    best_original_face = original["faces"][int(np.argmax(faces[3] @ again))]
    assert faces_of == {original["id"]: best_original_face, copy["id"]: copy["faces"][0]}
    assert {pair["name_a"], pair["name_b"]} == {"person 3", "person 3 again"}
    assert report["identities"] == PEOPLE + 1 and report["faces"] == PEOPLE * FACES_EACH + 1
    # The copy is also the highest stranger score the FPIR measurement saw.
    assert report["fpir"]["stranger_scores"]["top"][0] == pytest.approx(expected, abs=1e-4)


def test_report_finds_no_duplicates_when_everyone_is_enrolled_once(app_client):
    names, faces = _people()
    with app_client() as client:
        _plant(client, names, faces)
        model = client.get("/readyz").json()["model"]
        report = client.get("/gallery/report").json()
    assert report["duplicates"]["pairs"] == [] and report["duplicates"]["pairs_found"] == 0
    assert report["faces_per_identity"] == {"count": PEOPLE, "min": 2, "median": 2, "max": 2}
    assert {"label": "2", "count": PEOPLE} in report["faces_per_identity_histogram"]
    assert report["faces_per_model"] == {model: PEOPLE * FACES_EACH}
    # Embeddings enrolled directly have no detection; their norm is the stored quality.
    assert report["quality"]["without_detection"] == PEOPLE * FACES_EACH
    assert report["quality"]["embedding_norm"]["median"] == pytest.approx(1.0, abs=1e-3)
    assert [row["target_fpir"] for row in report["fpir"]["thresholds"]] == [0.1, 0.01, 0.001]


def test_report_says_when_the_duplicate_search_was_a_sample(tmp_path):
    gallery = open_test_gallery(tmp_path / "data", dim=DIM)
    try:
        names, faces = _people()
        for name, vectors in zip(names, faces, strict=True):
            identity = gallery.create_identity(name)
            for vector in vectors:
                gallery.add_embedding(identity.id, vector.tolist(), gallery.model_id)
        report, _ = build_report(
            gallery, threshold_1to1=THRESHOLD, calibration=None, options=ReportOptions(max_faces=5)
        )
    finally:
        gallery.close()
    assert report.duplicates.sampled and report.duplicates.faces_searched == 5
    assert "random sample of 5 of the 20 faces" in report.duplicates.note
    assert "random sample of 5 of the 20 faces" in format_text(report)


def test_strict_threshold_is_the_calibrated_one_at_fmr_1e5_else_the_margin():
    def entry(fmr: float, threshold: float) -> FmrThreshold:
        return FmrThreshold(
            fmr=fmr, threshold=threshold, measured_fmr=fmr, fnmr=0.0, interval=(0.0, 1.0)
        )

    calibration = Calibration(
        dataset="pairs", genuine_pairs=10, impostor_pairs=10**7, date="2026-01-01",
        thresholds=[entry(1e-3, 0.4), entry(1e-5, 0.52), entry(1e-6, 0.6)],
    )  # fmt: skip
    assert strict_threshold(0.4, calibration) == (0.52, "pack calibration at FMR 1e-05")
    shallow = calibration.model_copy(update={"thresholds": [entry(1e-3, 0.4)]})
    value, source = strict_threshold(0.4, shallow)
    assert value == pytest.approx(0.55) and "+ 0.15" in source
    assert strict_threshold(0.95, None)[0] == 1.0


def test_histogram_bins_cover_every_identity_once():
    counts = [0, 1, 1, 2, 4, 5, 9, 60]
    bins = histogram(counts)
    assert sum(b.count for b in bins) == len(counts)
    assert {b.label: b.count for b in bins}["4-5"] == 2 and bins[-1].label == "51+"


def test_report_route_refuses_a_key_without_gallery_read(app_client, tmp_path):
    keys = tmp_path / "keys.json"
    _, reader = create_key(keys, "reader", ["gallery:read"])
    _, verifier = create_key(keys, "verifier", ["verify"])
    with app_client(api_keys_file=keys) as client:
        for path in ("/gallery/report", "/gallery/report.png"):
            refused = client.get(path, headers={"X-API-Key": verifier})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            assert client.get(path, headers={"X-API-Key": reader}).status_code == 200


def test_report_png_is_a_png_of_the_fpir_curve(app_client):
    names, faces = _people()
    with app_client() as client:
        _plant(client, names, faces)
        response = client.get("/gallery/report.png")
        empty_args = client.get("/gallery/report.png", params={"max_faces": 0})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert (image < 250).any()  # something was drawn
    assert empty_args.status_code == 422


def test_gallery_report_command_prints_a_readable_report_and_writes_the_png(
    tmp_path, monkeypatch, capsys
):
    pack = make_manifest_pack(
        tmp_path / "pack",
        [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)],
        embedding_size=DIM,
        threshold=THRESHOLD,
    )
    data_dir = tmp_path / "data"
    gallery = open_test_gallery(data_dir, dim=DIM, model_id=_model_id(pack))
    names, faces = _people()
    ids = []
    for name, vectors in zip([*names, "person 5 again"], [*faces, faces[5]], strict=True):
        identity = gallery.create_identity(name)
        ids.append(identity.id)
        for vector in vectors:
            gallery.add_embedding(identity.id, vector.tolist(), gallery.model_id)
    gallery.close()
    monkeypatch.setenv("FACEVERIFY_PACK_DIR", str(pack))
    monkeypatch.setenv("FACEVERIFY_DATA_DIR", str(data_dir))
    png = tmp_path / "fpir.png"

    assert main(["gallery", "report", "--no-progress", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"identities {PEOPLE + 1}, faces {PEOPLE * FACES_EACH + 2}" in out
    assert "Suspected duplicates (score >= 0.65" in out
    pair_lines = [line for line in out.splitlines() if line.startswith("  1.0000  ")]
    assert len(pair_lines) == 1 and ids[5] in pair_lines[0] and ids[-1] in pair_lines[0]
    assert "FPIR 0.1:" in out and "FPIR 0.001:" in out
    assert png.read_bytes().startswith(PNG_SIGNATURE)

    assert main(["gallery", "report", "--no-progress", "--json", "--min-score", "0.99"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["duplicates"]["min_score"] == 0.99 and len(report["duplicates"]["pairs"]) == 1


def _model_id(pack: Path) -> str:
    from service.packs import load_pack

    return load_pack(pack, verify_checksums=False).model_id


@pytest.mark.assets
def test_real_photos_one_person_under_two_ids_is_the_only_suspected_pair(
    real_pack_dir: Path, assets_dir: Path, tmp_path: Path
):
    """The 13 deepface people, id01's photos split over two identity ids: that pair, and no
    other, scores above the strict threshold (pack threshold + 0.15: the pack is not
    calibrated at FMR 1e-5)."""
    from fastapi.testclient import TestClient

    deepface = assets_dir / "images" / "deepface"
    people: dict[str, list[str]] = json.loads((deepface / "identities.json").read_text())
    settings = Settings(pack_dir=real_pack_dir, data_dir=tmp_path / "data", _env_file=None)
    with TestClient(create_app(settings)) as client:
        ids: dict[str, str] = {}
        for person, photos in sorted(people.items()):
            groups = [photos] if person != "id01" else [photos[::2], photos[1::2]]
            for number, group in enumerate(groups):
                name = person if number == 0 else f"{person} again"
                ids[name] = client.post("/identities", json={"name": name}).json()["id"]
                for photo in group:
                    path = deepface / person / photo
                    response = client.post(
                        f"/identities/{ids[name]}/faces",
                        files={"image": (path.name, path.read_bytes())},
                    )
                    assert response.status_code == 201, (person, photo, response.text)
        report = client.get("/gallery/report").json()
    duplicates = report["duplicates"]
    print(json.dumps(duplicates["pairs"], indent=1), duplicates["min_score"])
    [pair] = duplicates["pairs"]
    assert {pair["identity_a"], pair["identity_b"]} == {ids["id01"], ids["id01 again"]}
    assert pair["score"] >= duplicates["min_score"]


def test_an_empty_gallery_gives_a_report_and_a_plot_that_say_so(tmp_path):
    from service.gallery.report_plot import fpir_curve_png

    gallery = open_test_gallery(tmp_path / "data", dim=DIM)
    try:
        report, estimate = build_report(gallery, threshold_1to1=THRESHOLD, calibration=None)
    finally:
        gallery.close()
    assert report.identities == 0 and report.faces_per_identity.median is None
    assert report.duplicates.pairs == [] and not report.duplicates.sampled
    assert all(row.unsupported for row in report.fpir.thresholds)
    text = format_text(report)
    assert "none found" in text and "too few" in text
    png = fpir_curve_png(report, estimate.stranger_scores if estimate else np.zeros(0))
    assert png.startswith(PNG_SIGNATURE)


def test_faces_of_another_model_keep_the_counts_and_the_report_says_why_it_did_not_search(
    tmp_path,
):
    """Like /identify, the search refuses while faces of another model are enrolled (an
    answer could be wrong); the report still counts everything and says why."""
    names, faces = _people()
    old_model = "oldmodel@000000000000"
    old = open_test_gallery(tmp_path / "data", dim=DIM, model_id=old_model)
    for name, vectors in zip(names[:4], faces[:4], strict=True):
        identity = old.create_identity(name)
        for vector in vectors:
            old.add_embedding(identity.id, vector.tolist(), old_model)
    old.close()
    gallery = open_test_gallery(tmp_path / "data", dim=DIM)
    try:
        for name, vectors in zip(names[4:], faces[4:], strict=True):
            identity = gallery.create_identity(name)
            for vector in vectors:
                gallery.add_embedding(identity.id, vector.tolist(), gallery.model_id)
        report, estimate = build_report(gallery, threshold_1to1=THRESHOLD, calibration=None)
    finally:
        gallery.close()
    assert report.faces_per_model == {old_model: 8, gallery.model_id: 12}
    assert report.duplicates.faces_of_model == 12
    assert old_model in (report.duplicates.unavailable or "")
    assert estimate is None and old_model in (report.fpir.unavailable or "")
    assert "not searched" in format_text(report)
