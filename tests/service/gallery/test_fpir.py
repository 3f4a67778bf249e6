"""Identification thresholds by FPIR: measured on the gallery by searching enrolled identities
as strangers, they keep new strangers unknown at the asked rate where the 1:1 threshold does
not; a rate the gallery cannot support is refused, or read from the pack's calibration."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from gallery_support import open_test_gallery, unit

from service.errors import ErrorCode, ServiceError
from service.gallery.fpir import (
    PAIR_PROBES,
    FpirCalibrator,
    FpirEstimate,
    FpirOptions,
    Probe,
    fpir_at_size,
    measure,
    pair_scores,
    per_comparison_fmr,
)
from service.packs.thresholds import Calibration, FmrThreshold
from service.packs.verification_sets import threshold_at_fmr

DIM = 16  # different identities then spread around 0 with sd 0.25: a real impostor tail


def _enrol(gallery, identities: int, faces: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((identities, DIM)))
    for number, centre in enumerate(centres):
        identity = gallery.create_identity(f"person {number}")
        for _ in range(faces):
            face = unit(centre + 0.3 * rng.standard_normal(DIM) / np.sqrt(DIM))
            gallery.add_embedding(identity.id, face.tolist(), gallery.model_id)
    gallery._sync.catch_up()
    return centres


def _best_scores(gallery, queries: np.ndarray) -> np.ndarray:
    return np.array([row[0].similarity for row in gallery.identify(queries, 1)])


def test_per_comparison_fmr_and_fpir_at_size_are_inverse() -> None:
    fmr = per_comparison_fmr(0.01, 1000)
    assert fmr == pytest.approx(1.005e-5, rel=1e-3)
    assert fpir_at_size(fmr, 1000) == pytest.approx(0.01)
    assert fpir_at_size(0.0017, 1000) == pytest.approx(0.8175, abs=1e-3)  # the 1:1 default


def test_leave_one_out_threshold_keeps_new_strangers_unknown_at_the_asked_rate(
    tmp_path: Path,
) -> None:
    gallery = open_test_gallery(tmp_path, dim=DIM)
    try:
        _enrol(gallery, identities=500, faces=2, seed=1)
        estimate = measure(gallery, FpirOptions(probes=500, bootstrap_rounds=100))
        assert estimate.gallery_size == 500 and estimate.probes == 500
        chosen = estimate.threshold(0.05)
        assert chosen.method == "leave-one-out"
        assert chosen.source == "fpir:0.05@n=500"
        assert chosen.fpir <= 0.05 and chosen.fpir_low <= chosen.fpir <= chosen.fpir_high

        strangers = unit(np.random.default_rng(99).standard_normal((3000, DIM)))
        best = _best_scores(gallery, strangers)
        measured = float(np.mean(best >= chosen.threshold))
        assert 0.025 <= measured <= 0.1, measured  # within 2x of the target

        # The threshold that keeps a 1:1 comparison at FMR 0.05 lets most strangers through.
        one_to_one = threshold_at_fmr(estimate.pair_scores, 0.05)
        assert float(np.mean(best >= one_to_one)) > 0.9
    finally:
        gallery.close()


def test_a_rate_the_gallery_cannot_support_is_refused_with_what_would(tmp_path: Path) -> None:
    gallery = open_test_gallery(tmp_path, dim=DIM)
    try:
        _enrol(gallery, identities=20, faces=1, seed=2)
        estimate = measure(gallery, FpirOptions(probes=100))
        with pytest.raises(ServiceError) as refused:
            estimate.threshold(0.01)
        assert refused.value.code is ErrorCode.VALIDATION_ERROR
        assert "needs 1000 enrolled identities" in refused.value.message
        assert "there are 20" in refused.value.message
    finally:
        gallery.close()


def test_a_small_gallery_falls_back_to_the_packs_calibration_at_the_implied_fmr() -> None:
    estimate = FpirEstimate(
        gallery_size=20,
        faces=20,
        stranger_scores=np.linspace(-0.2, 0.4, 20),
        pair_scores=np.zeros(0),
    )
    calibration = Calibration(
        dataset="pairs",
        genuine_pairs=3000,
        impostor_pairs=300_000,
        date="2026-12-01",
        thresholds=[
            FmrThreshold(fmr=f, threshold=t, measured_fmr=f, fnmr=0.0, interval=(t, t))
            for f, t in ((1e-2, 0.30), (1e-3, 0.38), (1e-4, 0.45))
        ],
    )
    # FPIR 0.01 at N = 20 needs FMR 5.0e-4 per comparison: the 1e-4 entry is the largest under.
    chosen = estimate.threshold(0.01, calibration)
    assert chosen.method == "pack-calibration"
    assert chosen.threshold == 0.45
    assert chosen.fpir == pytest.approx(fpir_at_size(1e-4, 20))


def test_the_calibrator_measures_once_then_refreshes_in_the_background_as_the_gallery_grows(
    tmp_path: Path,
) -> None:
    gallery = open_test_gallery(tmp_path, dim=DIM)
    calibrator = FpirCalibrator(gallery, FpirOptions(probes=50, refresh_interval_s=60))
    try:
        _enrol(gallery, identities=40, faces=1, seed=3)
        first = calibrator.current()  # measures, and starts the background thread
        assert first.gallery_size == 40
        assert calibrator.current() is first  # not measured again while the gallery is still
        _enrol(gallery, identities=10, faces=1, seed=4)
        assert calibrator.current() is first  # a request never waits for a re-measurement...
        for _ in range(200):  # ...it wakes the thread, which measures the grown gallery
            if calibrator.estimate is not first:
                break
            calibrator._stop.wait(0.05)
        assert calibrator.estimate is not first
        assert calibrator.estimate.gallery_size == 50
    finally:
        calibrator.stop()
        gallery.close()


def test_probes_are_distinct_identities_with_one_face_of_their_own(tmp_path: Path) -> None:
    gallery = open_test_gallery(tmp_path, dim=DIM)
    try:
        centres = _enrol(gallery, identities=30, faces=3, seed=5)
        probes = gallery.sample_probes(10, random.Random(0))
        assert len(probes) == 10
        assert len({probe.identity_id for probe in probes}) == 10
        names = {i.id: i.name for i in gallery.list_identities(100, 0)[0]}
        for probe in probes:
            own = centres[int(names[probe.identity_id].split()[1])]
            assert float(probe.embedding @ own) > 0.8
    finally:
        gallery.close()


def test_pairwise_scores_stay_bounded_however_many_probes() -> None:
    rng = np.random.default_rng(6)
    probes = [Probe(f"p{i}", unit(rng.standard_normal(DIM))) for i in range(PAIR_PROBES + 500)]
    scores = pair_scores(probes)
    assert len(scores) == PAIR_PROBES * (PAIR_PROBES - 1) // 2
