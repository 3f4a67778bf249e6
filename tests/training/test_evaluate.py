"""The verification protocol on scores with known answers, and on real and synthetic sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.backbones import create_backbone
from training.evaluate import (
    TorchEmbedder,
    embed,
    evaluate_set,
    insightface_kfold_accuracy,
    kfold_accuracy,
    plot_roc,
    pooled_threshold,
    roc_curve,
    threshold_at_far,
    verification_result,
)
from training.verification import VerificationSet, load_bin


def test_separable_scores_give_full_accuracy_in_every_fold() -> None:
    scores = np.concatenate([np.linspace(0.6, 0.9, 50), np.linspace(-0.2, 0.4, 50)])
    issame = np.arange(100) < 50
    mean, std, threshold = kfold_accuracy(scores, issame)
    assert (mean, std) == (1.0, 0.0)
    assert 0.4 < threshold < 0.6


def test_each_fold_is_scored_with_the_threshold_learnt_on_the_others() -> None:
    # Ten folds of one matched + one mismatched pair. Fold 0 alone would be separable at 0.25,
    # but the other nine put the threshold between 0.5 and 0.9, which rejects its 0.3 match.
    scores = np.array([0.3, 0.2] + [0.9, 0.5] * 9)
    issame = np.array([True, False] * 10)
    mean, _, _ = kfold_accuracy(scores, issame)
    assert mean == pytest.approx((0.5 + 9 * 1.0) / 10)


def verification_py_accuracy(embeddings: np.ndarray, issame: np.ndarray) -> np.ndarray:
    """insightface recognition/arcface_torch/eval/verification.py `evaluate` → `calculate_roc`,
    transcribed loop for loop (LFold = sklearn KFold(10, shuffle=False): contiguous folds,
    the first n % 10 one pair larger)."""
    thresholds = np.arange(0, 4, 0.01)
    embeddings1, embeddings2 = embeddings[0::2], embeddings[1::2]
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    n = len(issame)
    sizes = np.full(10, n // 10)
    sizes[: n % 10] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    accuracy = np.zeros(10)
    for fold in range(10):
        test_set = np.arange(bounds[fold], bounds[fold + 1])
        train_set = np.setdiff1d(np.arange(n), test_set)
        acc_train = np.zeros(len(thresholds))
        for index, threshold in enumerate(thresholds):
            predict = np.less(dist[train_set], threshold)
            acc_train[index] = np.mean(predict == issame[train_set])
        best = thresholds[np.argmax(acc_train)]
        accuracy[fold] = np.mean(np.less(dist[test_set], best) == issame[test_set])
    return accuracy


def unit_pairs(num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of pairs whose cosines overlap between matched and mismatched."""
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    first = rng.normal(size=(num_pairs, 8))
    noise = rng.normal(size=(num_pairs, 8))
    second = np.where(issame[:, None], first + 0.9 * noise, noise + 0.3 * first)
    embeddings = np.empty((2 * num_pairs, 8))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), issame


def test_insightface_protocol_matches_verification_py_and_differs_from_the_exact_one() -> None:
    differs = False
    for seed in range(4):
        embeddings, issame = unit_pairs(303, seed)  # 303: folds of 31 and 30 pairs
        scores = (embeddings[0::2] * embeddings[1::2]).sum(axis=1)
        reference = verification_py_accuracy(embeddings, issame)
        mean, std, threshold = insightface_kfold_accuracy(scores, issame)
        assert mean == pytest.approx(reference.mean(), abs=1e-12)
        assert std == pytest.approx(reference.std(), abs=1e-12)
        assert -1.0 <= threshold <= 1.0
        differs |= abs(kfold_accuracy(scores, issame)[0] - mean) > 1e-9
    assert differs  # the exact midpoint and the 0.01 distance grid disagree somewhere


def test_insightface_protocol_takes_the_first_best_threshold_and_a_strict_less_than() -> None:
    # Distances 0.5 (matched) and 1.5 (mismatched): thresholds 0.51 … 1.50 all separate them;
    # the first, 0.51, is chosen: cos threshold 1 − 0.51/2 = 0.745.
    scores = np.array([0.75, 0.25] * 10)
    issame = np.array([True, False] * 10)
    mean, _, threshold = insightface_kfold_accuracy(scores, issame)
    assert mean == 1.0
    assert threshold == pytest.approx(0.745)


def test_bin_sets_default_to_the_insightface_protocol_others_to_the_exact_one() -> None:
    embeddings, issame = unit_pairs(40, 0)
    images = np.zeros((80, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(80)  # image i → embedding i

    def embedder(batch: np.ndarray) -> np.ndarray:
        return embeddings[batch[:, 0, 0, 0].astype(int)].astype(np.float32)

    from_bin = evaluate_set(embedder, VerificationSet("lfw", images, issame, "bin"))
    from_pairs = evaluate_set(embedder, VerificationSet("pairs", images, issame, "pairs"))
    exact_bin = evaluate_set(
        embedder, VerificationSet("lfw", images, issame, "bin"), protocol="exact"
    )
    assert (from_bin.protocol, from_pairs.protocol, exact_bin.protocol) == (
        "insightface", "exact", "exact"
    )  # fmt: skip
    assert from_bin.to_dict()["protocol"] == "insightface"
    assert "insightface protocol" in from_bin.summary()
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate_set(embedder, VerificationSet("x", images, issame), protocol="lfw")


def test_threshold_at_far_accepts_exactly_that_fraction_of_mismatched_pairs() -> None:
    negatives = np.arange(1000) / 1000.0
    scores = np.concatenate([negatives, [0.995, 0.5]])
    issame = np.concatenate([np.zeros(1000, bool), [True, True]])
    threshold = threshold_at_far(scores, issame, 0.01)
    assert threshold is not None
    assert int((negatives >= threshold).sum()) == 10  # 0.990 … 0.999, accepted as ≥ threshold
    assert 0.989 < threshold <= 0.990
    result = verification_result("set", scores, issame, target_far=0.01)
    # The 0.995 match clears thresholds 0.9 and 0.99 but not 0.999; 1e-4 needs 10,000 pairs.
    assert result.tar_at_far == {0.1: 0.5, 0.01: 0.5, 0.001: 0.0}


def test_threshold_at_far_is_unknown_without_enough_mismatched_pairs() -> None:
    issame = np.array([True] * 10)
    assert threshold_at_far(np.linspace(0, 1, 10), issame, 1e-3) is None
    assert verification_result("all matched", np.linspace(0, 1, 10), issame).tar_at_far == {}


def test_threshold_at_far_where_every_mismatch_may_match_refuses_no_pair() -> None:
    # Calibration's rule (service.packs.verification_sets.threshold_at_fmr): the lowest
    # threshold; the lowest mismatched score would refuse the matched pair at 0.1.
    scores, issame = np.array([0.1, 0.3, 0.5]), np.array([True, False, False])
    assert threshold_at_far(scores, issame, 1.0) == -1.0


def test_pooled_threshold_uses_the_pairs_of_every_set() -> None:
    small = [
        verification_result(f"s{i}", np.array([0.9, 0.1 * i]), np.array([True, False]))
        for i in range(10)
    ]
    assert threshold_at_far(small[0].scores, small[0].issame, 0.1) is None
    pooled = pooled_threshold(small, 0.1)
    assert pooled is not None and 0.8 < pooled <= 0.9  # only the top mismatched score, 0.9


def test_roc_curve_runs_from_origin_to_one_one_monotonically() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.6, 0.1, 200), rng.normal(0.1, 0.1, 200)])
    issame = np.arange(400) < 200
    far, tar = roc_curve(scores, issame)
    assert (far[0], tar[0], far[-1], tar[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert bool((np.diff(far) >= 0).all() and (np.diff(tar) >= 0).all())


def test_plot_roc_writes_a_png(tmp_path: Path) -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.1] * 5)
    result = verification_result("set", scores, np.array([True, True, False, False] * 5))
    path = plot_roc([result], tmp_path / "plots" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flip_test_sums_the_raw_embeddings_of_image_and_mirror() -> None:
    def left_half_brightness(images: np.ndarray) -> np.ndarray:
        left = images[:, :, : images.shape[2] // 2].mean(axis=(1, 2, 3))
        return np.stack([left, np.ones(len(images))], axis=1).astype(np.float32)

    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, :, :2] = 100  # bright left half: mirror has a dark left half
    plain = embed(left_half_brightness, images)
    flipped = embed(left_half_brightness, images, flip=True)
    assert torch.allclose(
        plain[0], torch.nn.functional.normalize(torch.tensor([100.0, 1.0]), dim=0)
    )
    assert torch.allclose(
        flipped[0], torch.nn.functional.normalize(torch.tensor([100.0, 2.0]), dim=0)
    )


def test_evaluation_runs_on_the_shared_small_lfw_bin(shared_assets: Path) -> None:
    verification = load_bin(shared_assets / "bins" / "small_lfw.bin")
    backbone = create_backbone("mobilefacenet", embedding_size=32, width=0.125)
    result = evaluate_set(TorchEmbedder(backbone), verification, flip=True)
    assert result.num_pairs == 10 and result.num_matched == 10
    assert result.threshold_at_target_far is None  # no mismatched pairs in this file
    assert 0.0 <= result.accuracy <= 1.0
    assert result.scores.shape == (10,) and np.isfinite(result.scores).all()
