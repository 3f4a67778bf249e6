"""Calibrated thresholds: the threshold for a target FMR, when pairs cannot support it, the
bootstrap interval, storage with the pack (manifest or sidecar), `target_fmr` over HTTP, and
the CLI on the shared photos (calibrate on one set, report accuracy on the other)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_models import SyntheticFace, make_manifest_pack, make_pack_folder
from testimages import encode, noise_image

from service.packs import MANIFEST_NAME, SIDECAR_NAME, load_pack, save_calibration
from service.packtools.calibration import (
    CalibrationError,
    ScoredPairs,
    calibrate,
    false_match_rate,
    save_det_curve,
    score_bin,
    score_pairs_file,
    supports,
    threshold_for_fmr,
)


def _pairs(genuine: int = 200, impostor: int = 5000, seed: int = 0) -> ScoredPairs:
    rng = np.random.default_rng(seed)
    return ScoredPairs(
        "synthetic",
        np.clip(rng.normal(0.7, 0.1, genuine), -1, 1),
        np.clip(rng.normal(0.0, 0.12, impostor), -1, 1),
    )


def test_the_threshold_is_the_lowest_that_keeps_the_fmr_under_the_target():
    impostor = np.arange(1000) / 1000.0  # 0.000 … 0.999
    threshold = threshold_for_fmr(impostor, 0.01)
    assert false_match_rate(impostor, threshold) == pytest.approx(0.01)
    assert false_match_rate(impostor, np.nextafter(threshold, -1)) > 0.01
    assert 0.989 < threshold < 0.990 + 1e-9


def test_a_target_whose_pair_count_rounds_under_an_integer_still_allows_that_many_matches():
    impostor = np.arange(100) / 100.0  # 0.29 x 100 = 28.999999999999996 in floating point
    assert false_match_rate(impostor, threshold_for_fmr(impostor, 0.29)) == pytest.approx(0.29)


def test_the_stored_threshold_keeps_the_fmr_it_reports_and_stays_under_the_target():
    # The 11th highest impostor, 0.3000004, must be refused; 6 decimals rounded to nearest
    # would store 0.3 and accept it (FMR 0.011 for a target of 0.01).
    impostor = np.concatenate([np.full(10, 0.9), [0.3000004], np.zeros(989)])
    pairs = ScoredPairs("edge", np.full(10, 0.95), impostor)
    (entry,) = calibrate(pairs, fmrs=(0.01,), bootstrap_rounds=0).thresholds
    assert entry.threshold == 0.300001
    assert false_match_rate(impostor, entry.threshold) == entry.measured_fmr == 0.01


def test_targets_beyond_what_the_impostor_pairs_support_are_listed_not_guessed():
    assert supports(3000, 1e-3) and not supports(2999, 1e-3)
    calibration = calibrate(_pairs(impostor=5000), bootstrap_rounds=50)
    assert calibration.available_fmrs() == [0.1, 0.01, 0.001]
    assert calibration.unsupported_fmrs == [1e-4, 1e-5, 1e-6]
    assert calibration.impostor_pairs == 5000 and calibration.genuine_pairs == 200


def test_each_threshold_has_its_rates_and_a_bootstrap_interval_around_it():
    calibration = calibrate(_pairs(), [0.1, 0.01], bootstrap_rounds=200)
    thresholds = [entry.threshold for entry in calibration.thresholds]
    assert thresholds == sorted(thresholds)  # a smaller FMR needs a higher threshold
    for entry in calibration.thresholds:
        low, high = entry.interval
        assert low <= entry.threshold <= high and low < high
        assert entry.measured_fmr <= entry.fmr
        assert 0.0 <= entry.fnmr <= 1.0


def test_pairs_of_one_kind_only_cannot_be_calibrated():
    with pytest.raises(CalibrationError, match="both kinds"):
        calibrate(ScoredPairs("x", np.array([0.5]), np.array([])))


def test_the_det_plot_says_what_to_install_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(CalibrationError, match="matplotlib"):
        save_det_curve([_pairs()], tmp_path / "det.png", calibrate(_pairs(), bootstrap_rounds=0))


# --- storage -------------------------------------------------------------------------------


def test_a_calibration_goes_into_the_manifest_and_back(tmp_path):
    pack_dir = make_manifest_pack(tmp_path / "pack")
    pack = load_pack(pack_dir)
    calibration = calibrate(
        _pairs(), [0.01], bootstrap_rounds=0, recognizer_sha256=pack.manifest.recognizer.sha256
    )
    assert save_calibration(pack_dir, calibration, MANIFEST_NAME) == pack_dir / MANIFEST_NAME
    reloaded = load_pack(pack_dir).manifest.thresholds
    assert reloaded is not None and reloaded.for_fmr(1e-2).threshold == pytest.approx(
        calibration.thresholds[0].threshold
    )
    assert reloaded.dataset == "synthetic" and reloaded.date


def test_an_insightface_folder_keeps_its_calibration_beside_the_models(tmp_path):
    folder = make_pack_folder(tmp_path / "insightface")
    pack = load_pack(folder)
    assert pack.manifest.thresholds is None
    calibration = calibrate(
        _pairs(), [0.1], bootstrap_rounds=0, recognizer_sha256=pack.manifest.recognizer.sha256
    )
    assert save_calibration(folder, calibration, MANIFEST_NAME) == folder / SIDECAR_NAME
    assert not (folder / MANIFEST_NAME).exists()
    assert load_pack(folder).manifest.thresholds.for_fmr(0.1) is not None


def test_a_calibration_of_other_weights_is_ignored(tmp_path):
    folder = make_pack_folder(tmp_path / "insightface")
    calibration = calibrate(_pairs(), [0.1], bootstrap_rounds=0, recognizer_sha256="0" * 64)
    save_calibration(folder, calibration, MANIFEST_NAME)
    assert load_pack(folder).manifest.thresholds is None


# --- HTTP ----------------------------------------------------------------------------------

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)


@pytest.fixture
def calibrated_pack(tmp_path):
    pack_dir = make_manifest_pack(tmp_path / "pack", [FACE], threshold=0.5)
    calibration = calibrate(_pairs(), [0.1, 0.01], bootstrap_rounds=0)
    save_calibration(pack_dir, calibration, MANIFEST_NAME)
    return pack_dir, {e.fmr: e.threshold for e in calibration.thresholds}


def _photos() -> dict:
    data = encode(noise_image(640, seed=3), ".png")
    return {"image1": ("a.png", data, "image/png"), "image2": ("b.png", data, "image/png")}


def test_verify_uses_the_calibrated_threshold_and_says_where_it_came_from(
    app_client, calibrated_pack
):
    pack_dir, thresholds = calibrated_pack
    with app_client(pack_dir) as client:
        body = client.post("/verify", files=_photos(), data={"target_fmr": "0.01"}).json()
        assert body["threshold"] == pytest.approx(thresholds[0.01])
        assert body["threshold_source"] == "calibration:0.01"
        default = client.post("/verify", files=_photos()).json()
        assert (default["threshold"], default["threshold_source"]) == (0.5, "pack default")
        given = client.post("/verify", files=_photos(), data={"threshold": "0.2"}).json()
        assert (given["threshold"], given["threshold_source"]) == (0.2, "request")
        missing = client.post("/verify", files=_photos(), data={"target_fmr": "0.001"})
        assert missing.status_code == 422
        error = missing.json()["error"]
        assert error["code"] == "validation_error" and "0.1, 0.01" in error["message"]
        both = client.post(
            "/verify", files=_photos(), data={"target_fmr": "0.1", "threshold": "0.3"}
        )
        assert both.status_code == 422


def test_identify_accepts_target_fmr_and_an_uncalibrated_pack_says_how_to_calibrate(
    app_client, calibrated_pack, tmp_path
):
    pack_dir, thresholds = calibrated_pack
    photo = {"image": ("a.png", encode(noise_image(640, seed=3), ".png"), "image/png")}
    with app_client(pack_dir) as client:
        body = client.post("/identify", files=photo, data={"target_fmr": "0.1"}).json()
        assert body["threshold"] == pytest.approx(thresholds[0.1])
        assert body["threshold_source"] == "calibration:0.1"
    plain = make_manifest_pack(tmp_path / "plain", [FACE])
    with app_client(plain, data_dir=tmp_path / "d2", threshold=0.3) as client:
        refused = client.post("/identify", files=photo, data={"target_fmr": "0.1"})
        assert refused.status_code == 422 and "calibrate" in refused.json()["error"]["message"]
        assert client.post("/identify", files=photo).json()["threshold_source"] == "settings"


# --- real pairs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(real_pack_dir: Path):
    from service.faces.pipeline import FacePipeline, PipelineOptions
    from service.runtime import RuntimeOptions

    return FacePipeline.from_pack(load_pack(real_pack_dir), PipelineOptions(), RuntimeOptions())


@pytest.mark.assets
def test_an_insightface_bin_is_scored_as_aligned_crops(pipeline, assets_dir):
    pairs = score_bin(assets_dir / "bins" / "small_lfw.bin", pipeline)
    assert len(pairs.genuine) == 10 and len(pairs.impostor) == 0
    assert pairs.genuine.mean() > 0.4


@pytest.mark.assets
def test_an_lfw_style_pairs_list_is_scored_through_the_pipeline(pipeline, assets_dir, tmp_path):
    deepface = assets_dir / "images" / "deepface"
    layout = {"ann": ["id01/img1.jpg", "id01/img2.jpg"], "bob": ["id02/img3.jpg"]}
    for name, files in layout.items():
        (tmp_path / name).mkdir()
        for number, file in enumerate(files, start=1):
            (tmp_path / name / f"{name}_{number:04d}.jpg").symlink_to(deepface / file)
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("1\t2\nann\t1\t2\nann\t1\tbob\t1\nann\t2\tbob\t1\n")
    pairs = score_pairs_file(pairs_file, tmp_path, pipeline)
    assert len(pairs.genuine) == 1 and len(pairs.impostor) == 2
    assert pairs.genuine.min() > pairs.impostor.max()


@pytest.mark.assets
@pytest.mark.slow
def test_calibrate_on_deepface_and_evaluate_on_face_recognition(
    real_pack_dir, assets_dir, tmp_path, app_client
):
    pack = tmp_path / "pack"
    pack.mkdir()
    for model in real_pack_dir.glob("*.onnx"):
        (pack / model.name).symlink_to(model)
    images = assets_dir / "images"
    command = [
        sys.executable, "-m", "service", "calibrate", "--pack", str(pack),
        "--pairs", str(images / "deepface"), "--evaluate", str(images / "face_recognition"),
        "--bootstrap", "100", "--det", str(tmp_path / "det.png"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert "140 genuine pairs, 1690 impostor pairs" in result.stdout
    assert "1e-03 not supported" in result.stdout and "on face_recognition" in result.stdout
    assert (tmp_path / "det.png").stat().st_size > 10_000
    calibration = load_pack(pack).manifest.thresholds
    assert calibration.available_fmrs() == [0.1, 0.01]
    assert calibration.dataset == "deepface" and calibration.impostor_pairs == 1690
    photo = (images / "face_recognition" / "obama" / "obama.jpg").read_bytes()
    other = (images / "face_recognition" / "obama" / "obama2.jpg").read_bytes()
    files = {"image1": ("a.jpg", photo), "image2": ("b.jpg", other)}
    with app_client(pack) as client:
        body = client.post("/verify", files=files, data={"target_fmr": "0.01"}).json()
    assert body["threshold_source"] == "calibration:0.01" and body["match"] is True
