"""Threshold calibration: from labelled pairs to the cosine threshold of each target false match
rate (FMR), with the false non-match rate (FNMR) it costs and a bootstrap interval.

Pairs are scored by the service's own pipeline (decode → detect → align → embed, largest face)
so the thresholds hold for what the service computes. Sources: an InsightFace `.bin` (aligned
112x112 crops: embedded directly), a folder of identity sub-folders (every same-identity pair;
every different-identity pair, or a sample of them), or an LFW-style `pairs.txt` with its image
folder. `python -m service calibrate` (service/cli/calibrate.py) drives it.

A target FMR needs enough impostor pairs: with n pairs and none over the threshold, the rule of
three bounds the true FMR by 3/n at 95% confidence, so a target is reported only when
n * FMR >= 3; smaller targets are listed as unsupported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from service.errors import ServiceError
from service.faces.pipeline import FacePipeline
from service.matching import paired_similarities
from service.packs.thresholds import Calibration, FmrThreshold
from service.packs.verification_sets import (
    IMAGE_SUFFIXES,
    VerificationSetError,
    false_match_rate,
    read_bin,
    read_pairs_list,
    threshold_at_fmr,
)

DEFAULT_FMRS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Rule of three (Hanley & Lippman-Hand 1983): 0 errors in n trials bound the rate by 3/n (95%).
MIN_ERRORS_EXPECTED = 3.0
DEFAULT_BOOTSTRAP_ROUNDS = 1000
# Different-identity pairs of a folder beyond which a random sample is used.
DEFAULT_MAX_IMPOSTOR_PAIRS = 200_000
REPORT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 9))
# Decimals of a stored threshold (pack.json stays readable; 1e-6 is far below any FMR step).
THRESHOLD_DECIMALS = 6
THRESHOLD_SCALE = 10**THRESHOLD_DECIMALS


class CalibrationError(Exception):
    """A source that cannot be read or holds too few pairs; printed as one line."""


@dataclass
class ScoredPairs:
    """Cosine similarities of genuine (same person) and impostor (different) pairs."""

    dataset: str
    genuine: np.ndarray
    impostor: np.ndarray
    skipped_images: int = 0  # images without a usable face (their pairs are left out)


# --- sources ----------------------------------------------------------------------------------


def _embed_photo(pipeline: FacePipeline, path: Path) -> np.ndarray | None:
    try:
        faces = pipeline.analyze(path.read_bytes()).faces
    except (OSError, ServiceError):
        return None
    return faces[0].embedding if faces else None


def score_folder(
    folder: Path,
    pipeline: FacePipeline,
    *,
    max_impostor_pairs: int = DEFAULT_MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> ScoredPairs:
    """Every pair of photos of a folder of identity sub-folders (those starting with `_` or
    `.` are skipped); impostor pairs are sampled when there are more than the maximum."""
    embeddings: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    people = sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] not in "_.")
    for label, person in enumerate(people):
        for photo in sorted(person.iterdir()):
            if photo.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            embedding = _embed_photo(pipeline, photo)
            if embedding is None:
                skipped += 1
                continue
            embeddings.append(embedding)
            labels.append(label)
    if len(set(labels)) < 2:
        raise CalibrationError(f"{folder}: need photos of at least 2 people in sub-folders")
    matrix = np.stack(embeddings)
    similarities = np.clip(matrix @ matrix.T, -1.0, 1.0)
    first, second = np.triu_indices(len(labels), k=1)
    same = np.asarray(labels)[first] == np.asarray(labels)[second]
    scores = similarities[first, second]
    impostor = scores[~same]
    if len(impostor) > max_impostor_pairs:
        impostor = np.random.default_rng(seed).choice(impostor, max_impostor_pairs, replace=False)
    return ScoredPairs(folder.name, scores[same], impostor, skipped)


def score_bin(path: Path, pipeline: FacePipeline) -> ScoredPairs:
    """An InsightFace verification `.bin`: a pickle of (encoded aligned crops, issame list).
    Only open `.bin` files from sources you trust: unpickling can run code."""
    try:
        contents = read_bin(path)
    except (OSError, VerificationSetError) as exc:
        raise CalibrationError(str(exc)) from exc
    size = pipeline.embedder.input_size
    crops = [
        image
        if image.shape[:2] == (size, size)
        else cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        for image in contents.images
    ]
    embeddings = pipeline.embedder.embed(crops).embeddings
    scores = paired_similarities(embeddings[0::2], embeddings[1::2])
    same = contents.issame[: len(scores)]
    return ScoredPairs(contents.name, scores[same], scores[~same])


def score_pairs_file(pairs_file: Path, images: Path, pipeline: FacePipeline) -> ScoredPairs:
    """An LFW-style `pairs.txt`: `name n1 n2` (same person) or `name1 n1 name2 n2`
    (different), after an optional `folds pairs` header line."""
    try:
        pairs = read_pairs_list(pairs_file, images)
    except (OSError, VerificationSetError) as exc:
        raise CalibrationError(str(exc)) from exc
    cache: dict[Path, np.ndarray | None] = {}

    def embedding(path: Path) -> np.ndarray | None:
        if path not in cache:
            cache[path] = _embed_photo(pipeline, path)
        return cache[path]

    genuine, impostor = [], []
    for pair in pairs:
        first, second = embedding(pair.first), embedding(pair.second)
        if first is None or second is None:
            continue
        score = float(np.clip(np.dot(first, second), -1.0, 1.0))
        (genuine if pair.same else impostor).append(score)
    skipped = sum(value is None for value in cache.values())
    return ScoredPairs(pairs_file.stem, np.array(genuine), np.array(impostor), skipped)


def score_source(
    source: Path, pipeline: FacePipeline, images: Path | None = None, **folder_options
) -> ScoredPairs:
    """Score whichever kind of source `source` is."""
    if source.is_dir():
        return score_folder(source, pipeline, **folder_options)
    if source.suffix == ".bin":
        return score_bin(source, pipeline)
    if source.is_file():
        if images is None:
            raise CalibrationError(f"{source}: a pairs list needs --images (its image folder)")
        return score_pairs_file(source, images, pipeline)
    raise CalibrationError(f"{source}: no such file or folder")


# --- rates and thresholds ---------------------------------------------------------------------


def false_non_match_rate(genuine: np.ndarray, threshold: float) -> float:
    return float(np.mean(genuine < threshold)) if len(genuine) else math.nan


def supports(impostor_pairs: int, fmr: float) -> bool:
    """Whether this many impostor pairs can show an FMR this small (rule of three)."""
    return impostor_pairs * fmr >= MIN_ERRORS_EXPECTED


def threshold_for_fmr(impostor: np.ndarray, fmr: float) -> float:
    """`threshold_at_fmr` within the cosine range a pack stores: an impostor pair at 1.0 (a
    duplicate photo) cannot be refused by any threshold <= 1.0, and `measured_fmr` shows it."""
    return min(threshold_at_fmr(impostor, fmr), 1.0)


def stored_threshold(threshold: float) -> float:
    """`threshold` as the pack stores it, 6 decimals, rounded up: rounding down could accept
    the impostor score the threshold was placed just above."""
    stored = math.ceil(threshold * THRESHOLD_SCALE) / THRESHOLD_SCALE
    while stored < threshold:  # x * 1e6 rounded down in floating point
        stored = round(stored + 1 / THRESHOLD_SCALE, THRESHOLD_DECIMALS)
    return min(stored, 1.0)


def bootstrap_interval(
    impostor: np.ndarray, fmr: float, rounds: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% percentile interval of the threshold over impostor sets resampled with
    replacement."""
    if rounds <= 0:
        threshold = threshold_for_fmr(impostor, fmr)
        return threshold, threshold
    samples = [
        threshold_for_fmr(rng.choice(impostor, len(impostor), replace=True), fmr)
        for _ in range(rounds)
    ]
    low, high = np.percentile(samples, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def calibrate(
    pairs: ScoredPairs,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    *,
    bootstrap_rounds: int = DEFAULT_BOOTSTRAP_ROUNDS,
    seed: int = 0,
    recognizer_sha256: str | None = None,
) -> Calibration:
    if len(pairs.genuine) == 0 or len(pairs.impostor) == 0:
        raise CalibrationError(
            f"{pairs.dataset}: {len(pairs.genuine)} genuine and {len(pairs.impostor)} impostor "
            "pairs; both kinds are needed"
        )
    rng = np.random.default_rng(seed)
    entries, unsupported = [], []
    for fmr in sorted(fmrs, reverse=True):
        if not supports(len(pairs.impostor), fmr):
            unsupported.append(fmr)
            continue
        threshold = stored_threshold(threshold_for_fmr(pairs.impostor, fmr))
        entries.append(
            FmrThreshold(
                fmr=fmr,
                threshold=threshold,
                measured_fmr=false_match_rate(pairs.impostor, threshold),
                fnmr=false_non_match_rate(pairs.genuine, threshold),
                interval=bootstrap_interval(pairs.impostor, fmr, bootstrap_rounds, rng),
            )
        )
    return Calibration(
        dataset=pairs.dataset,
        genuine_pairs=len(pairs.genuine),
        impostor_pairs=len(pairs.impostor),
        date=datetime.now(UTC).date().isoformat(),
        recognizer_sha256=recognizer_sha256,
        thresholds=entries,
        unsupported_fmrs=unsupported,
    )


# --- reports ----------------------------------------------------------------------------------


def describe_scores(pairs: ScoredPairs) -> list[str]:
    g, i = pairs.genuine, pairs.impostor
    lines = [
        f"data set {pairs.dataset}: {len(g)} genuine pairs, {len(i)} impostor pairs"
        + (
            f", {pairs.skipped_images} image(s) without a usable face left out"
            if pairs.skipped_images
            else ""
        ),
    ]
    if len(g):
        lines.append(
            f"  genuine  cosine mean {g.mean():.3f} sd {g.std():.3f} min {g.min():.3f} "
            f"max {g.max():.3f}"
        )
    if len(i):
        lines.append(
            f"  impostor cosine mean {i.mean():.3f} sd {i.std():.3f} min {i.min():.3f} "
            f"max {i.max():.3f}"
        )
    return lines


def rates_table(pairs: ScoredPairs, thresholds: Sequence[float] = REPORT_THRESHOLDS) -> list[str]:
    lines = ["  threshold     FMR      FNMR"]
    for threshold in thresholds:
        lines.append(
            f"  {threshold:9.2f} {false_match_rate(pairs.impostor, threshold):8.4f} "
            f"{false_non_match_rate(pairs.genuine, threshold):8.4f}"
        )
    return lines


def calibration_table(calibration: Calibration) -> list[str]:
    lines = ["  target FMR  threshold  95% interval      measured FMR  FNMR"]
    for entry in calibration.thresholds:
        low, high = entry.interval
        lines.append(
            f"  {entry.fmr:10.0e} {entry.threshold:10.4f}  [{low:.4f}, {high:.4f}]  "
            f"{entry.measured_fmr:12.4f}  {entry.fnmr:.4f}"
        )
    for fmr in calibration.unsupported_fmrs:
        needed = math.ceil(MIN_ERRORS_EXPECTED / fmr)
        lines.append(
            f"  {fmr:10.0e} not supported: {calibration.impostor_pairs} impostor pairs, "
            f"{needed} needed (rule of three)"
        )
    return lines


def evaluation_table(calibration: Calibration, pairs: ScoredPairs) -> list[str]:
    """How the calibrated thresholds do on another set of pairs."""
    total = len(pairs.genuine) + len(pairs.impostor)
    lines = [f"  on {pairs.dataset}: target FMR  threshold  FMR      FNMR     accuracy"]
    for entry in calibration.thresholds:
        fmr = false_match_rate(pairs.impostor, entry.threshold)
        fnmr = false_non_match_rate(pairs.genuine, entry.threshold)
        correct = np.sum(pairs.genuine >= entry.threshold) + np.sum(
            pairs.impostor < entry.threshold
        )
        lines.append(
            f"  {'':{len(pairs.dataset) + 4}}{entry.fmr:10.0e} {entry.threshold:10.4f}  "
            f"{fmr:.4f}   {fnmr:.4f}   {correct / total:.4f}"
        )
    return lines


def det_points(pairs: ScoredPairs) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every distinct score: the detection error trade-off curve."""
    thresholds = np.unique(np.concatenate([pairs.genuine, pairs.impostor]))
    fmr = np.array([false_match_rate(pairs.impostor, t) for t in thresholds])
    fnmr = np.array([false_non_match_rate(pairs.genuine, t) for t in thresholds])
    return fmr, fnmr


def save_det_curve(curves: Sequence[ScoredPairs], path: Path, calibration: Calibration) -> None:
    """A DET plot (FNMR against FMR, log axes) of each set, with the calibrated thresholds.
    Needs matplotlib (the `train` extra)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 5))
    for pairs in curves:
        fmr, fnmr = det_points(pairs)
        floor = 0.5 / max(len(pairs.impostor), len(pairs.genuine))
        axes.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor), label=pairs.dataset)
    for entry in calibration.thresholds:
        axes.axvline(entry.fmr, color="grey", linestyle=":", linewidth=0.8)
        axes.annotate(f"{entry.threshold:.3f}", (entry.fmr, 0.9), fontsize=7, rotation=90)
    axes.set(xscale="log", yscale="log", xlabel="false match rate", ylabel="false non-match rate")
    axes.set_title(f"DET, calibrated on {calibration.dataset}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _pyplot():  # -> matplotlib.pyplot, imported lazily
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CalibrationError(
            "the DET curve needs matplotlib, which is not installed: "
            "`pip install 'faceverify[train]'` (or matplotlib alone), or pass --no-plot"
        ) from exc
    return plt
