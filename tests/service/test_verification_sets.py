"""The rules calibration and training evaluation share: the false match rate counts impostor
scores >= the threshold; `threshold_at_fmr` is the lowest threshold keeping it at or under the
target, at the edges too (no impostor may match, every one may, ties, a score of 1.0, float
rounding of fmr * n); the `.bin` and pairs-list readers."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.packs.verification_sets import (
    VerificationSetError,
    false_match_rate,
    false_matches_allowed,
    read_bin,
    read_pairs_list,
    threshold_at_fmr,
)


def test_a_score_equal_to_the_threshold_is_a_false_match() -> None:
    assert false_match_rate(np.array([0.5, 0.2]), 0.5) == 0.5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fmr", [0.0, 0.01, 0.1, 0.25, 0.5, 0.99])
def test_the_threshold_is_the_lowest_whose_fmr_is_at_most_the_target(seed: int, fmr: float) -> None:
    rng = np.random.default_rng(seed)
    impostor = np.round(rng.normal(0.1, 0.2, 400), 2)  # two decimals: many ties
    threshold = threshold_at_fmr(impostor, fmr)
    assert false_match_rate(impostor, threshold) <= fmr
    assert false_match_rate(impostor, np.nextafter(threshold, -np.inf)) > fmr


def test_when_no_impostor_may_match_the_threshold_is_just_above_the_highest() -> None:
    impostor = np.array([0.1, 0.7, 0.3])
    threshold = threshold_at_fmr(impostor, 0.2)  # 0.2 x 3 < 1: no false match allowed
    assert threshold == np.nextafter(0.7, np.inf)
    assert false_match_rate(impostor, threshold) == 0.0


def test_an_impostor_at_one_can_only_be_refused_above_every_cosine() -> None:
    threshold = threshold_at_fmr(np.array([1.0, 0.2]), 0.0)
    assert threshold > 1.0 and false_match_rate(np.array([1.0]), threshold) == 0.0


def test_when_every_impostor_may_match_nothing_is_refused() -> None:
    assert threshold_at_fmr(np.array([0.4, 0.6]), 1.0) == -1.0


def test_ties_at_the_boundary_are_refused_together_so_the_fmr_stays_under_the_target() -> None:
    impostor = np.array([0.9, 0.8, 0.8, 0.1])
    assert threshold_at_fmr(impostor, 0.25) == np.nextafter(0.8, np.inf)  # 1 allowed: 0.9
    threshold = threshold_at_fmr(impostor, 0.5)  # 2 allowed, but the two 0.8s go together
    assert threshold == np.nextafter(0.8, np.inf)
    assert false_match_rate(impostor, threshold) == 0.25


def test_fmr_times_count_just_under_an_integer_in_floating_point_allows_that_integer() -> None:
    assert 0.29 * 100 < 29  # 28.999999999999996
    assert false_matches_allowed(100, 0.29) == 29
    impostor = np.arange(100) / 100.0
    assert false_match_rate(impostor, threshold_at_fmr(impostor, 0.29)) == pytest.approx(0.29)


def test_no_impostor_scores_or_a_negative_rate_are_refused() -> None:
    with pytest.raises(ValueError, match="no impostor scores"):
        threshold_at_fmr(np.array([]), 0.1)
    with pytest.raises(ValueError, match="fmr must be >= 0"):
        threshold_at_fmr(np.array([0.1]), -0.1)


def _jpeg(value: int) -> bytes:
    return cv2.imencode(".jpg", np.full((112, 112, 3), value, np.uint8))[1].tobytes()


@pytest.mark.parametrize("as_array", [False, True])
def test_a_bin_with_bytes_or_numpy_encoded_crops_is_decoded(tmp_path: Path, as_array: bool) -> None:
    encoded = [_jpeg(v) for v in (10, 20, 30, 40)]
    if as_array:
        encoded = [np.frombuffer(item, np.uint8) for item in encoded]
    (tmp_path / "set.bin").write_bytes(pickle.dumps((encoded, [True, False])))
    contents = read_bin(tmp_path / "set.bin")
    assert contents.name == "set" and contents.issame.tolist() == [True, False]
    assert [image.shape for image in contents.images] == [(112, 112, 3)] * 4


def test_a_file_that_is_no_bin_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.bin").write_bytes(b"not a pickle")
    with pytest.raises(VerificationSetError, match=r"broken\.bin: not an InsightFace \.bin"):
        read_bin(tmp_path / "broken.bin")


def test_a_bin_with_an_undecodable_crop_names_its_index(tmp_path: Path) -> None:
    (tmp_path / "set.bin").write_bytes(pickle.dumps(([_jpeg(1), b"junk"], [True])))
    with pytest.raises(VerificationSetError, match="image 1"):
        read_bin(tmp_path / "set.bin")


def _lfw_folder(root: Path) -> Path:
    for name, number in [("Ann", 1), ("Ann", 2), ("Bob", 1)]:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{name}_{number:04d}.jpg").write_bytes(_jpeg(number))
    return root


def test_a_pairs_list_gives_matched_and_mismatched_image_paths(tmp_path: Path) -> None:
    images = _lfw_folder(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text("1\t2\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    pairs = read_pairs_list(tmp_path / "pairs.txt", images)
    assert [(p.first.name, p.second.name, p.same) for p in pairs] == [
        ("Ann_0001.jpg", "Ann_0002.jpg", True),
        ("Ann_0001.jpg", "Bob_0001.jpg", False),
    ]


def test_a_bad_pairs_line_is_named_by_its_line_number_with_or_without_header(
    tmp_path: Path,
) -> None:
    images = _lfw_folder(tmp_path / "lfw")
    (tmp_path / "bare.txt").write_text("Ann 1 2\nAnn 1 2 3 4 5\n")
    with pytest.raises(VerificationSetError, match=r"bare\.txt:2: expected 3 or 4 fields"):
        read_pairs_list(tmp_path / "bare.txt", images)
    (tmp_path / "headed.txt").write_text("1 2\nAnn 1 2\nAnn\n")
    with pytest.raises(VerificationSetError, match=r"headed\.txt:3: expected 3 or 4 fields"):
        read_pairs_list(tmp_path / "headed.txt", images)


def test_a_missing_pair_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("Cid 1 2\n")
    with pytest.raises(FileNotFoundError, match="Cid_0001"):
        read_pairs_list(tmp_path / "pairs.txt", tmp_path)
