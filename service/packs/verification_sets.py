"""Verification sets and the threshold at a false match rate: the rules the service's calibration
and the training toolkit's evaluation share, written once, with numpy and OpenCV only (the
service does not depend on torch).

Readers:
- `read_bin`: an InsightFace verification `.bin` (lfw.bin, cfp_fp.bin, agedb_30.bin), a pickle
  of (encoded aligned crops, issame list); each encoded image may be `bytes` or a uint8 numpy
  array. Only open `.bin` files from sources you trust: unpickling can run code.
- `read_pairs_list`: an LFW-style `pairs.txt` (an optional `folds<TAB>pairs per fold` header,
  then `name n1 n2` for a matched pair and `name1 n1 name2 n2` for a mismatched one) over
  images at `<images>/<name>/<name>_NNNN.jpg`; it gives paths, and each caller reads them its
  own way (the service runs its whole pipeline on photos, training reads aligned crops).

The threshold rule: a pair is a match when its cosine similarity is >= the threshold (as
`service.matching.decide` accepts), so the false match rate at a threshold t is the share of
impostor scores >= t (`false_match_rate`). `threshold_at_fmr(impostor, fmr)` is the lowest
threshold whose false match rate is at most `fmr`, i.e. the one that refuses the fewest genuine
pairs while keeping that promise. With k = floor(fmr * n) false matches allowed among n impostor
scores ranked from the highest:
- k >= n (every impostor may match): -1.0, the lowest cosine; nothing is refused;
- k = 0 (no impostor may match): just above the highest impostor score, so none matches; when
  that score is 1.0 (a duplicate photo under two identities) the threshold is the next float
  above 1.0 and no pair at all can match;
- otherwise just above the (k+1)-th highest score (the next float up), so at most k match;
- ties: scores equal to the (k+1)-th highest are all refused with it, so when ties straddle
  the k-th place the false match rate falls below `fmr` rather than above it (no threshold
  can split equal scores).
Whether n impostor pairs can *show* such a rate at all (at least one expected false match, or
the rule of three's three) is the caller's policy: `false_matches_allowed` gives k.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Lowest cosine similarity: a threshold that accepts every pair.
LOWEST_COSINE = -1.0
# fmr * n computed in floating point can land a hair under an integer (0.29 * 100 =
# 28.999999999999996); this much is added before flooring so that it counts as the integer.
COUNT_TOLERANCE = 1e-9


class VerificationSetError(ValueError):
    """A verification set that cannot be read; the message names the file and the place."""


@dataclass(frozen=True)
class BinSet:
    """The contents of a `.bin`: decoded BGR uint8 crops (images 2i and 2i + 1 form pair i, at
    the size they were stored) and `issame` (N,) bool."""

    name: str
    images: list[np.ndarray]
    issame: np.ndarray


@dataclass(frozen=True)
class ImagePair:
    """One line of a pairs list: two image paths, and whether they show the same person."""

    first: Path
    second: Path
    same: bool


def decode_crop(encoded: bytes | np.ndarray, source: str = "image") -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP bytes (or a uint8 array of them) to a BGR uint8 (H, W, 3) array."""
    buffer = np.frombuffer(encoded, np.uint8) if isinstance(encoded, bytes | bytearray) else encoded
    image = cv2.imdecode(np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1), cv2.IMREAD_COLOR)
    if image is None:
        raise VerificationSetError(f"cannot decode {source}: not a JPEG/PNG/BMP/WebP image")
    return image


def read_bin(path: Path) -> BinSet:
    """An InsightFace verification `.bin`, its crops decoded (see the module docstring)."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            encoded, issame = pickle.load(stream, encoding="bytes")
    except FileNotFoundError:
        raise
    except (OSError, pickle.UnpicklingError, ValueError, EOFError, TypeError) as exc:
        raise VerificationSetError(f"{path}: not an InsightFace .bin ({exc})") from exc
    images = [decode_crop(item, f"{path} image {index}") for index, item in enumerate(encoded)]
    issame = np.asarray(issame, dtype=bool)
    if len(images) != 2 * len(issame):
        raise VerificationSetError(f"{path}: {len(images)} images for {len(issame)} pairs")
    return BinSet(path.stem, images, issame)


def pair_image(images: Path, name: str, number: str) -> Path:
    """`<images>/<name>/<name>_NNNN.<any image suffix>` (LFW's layout)."""
    stem = Path(images) / name / f"{name}_{int(number):04d}"
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    raise FileNotFoundError(
        f"pair image {stem}.jpg not found (LFW layout: <root>/<name>/<name>_NNNN.jpg)"
    )


def read_pairs_list(pairs_file: Path, images: Path) -> list[ImagePair]:
    """The pairs of an LFW-style `pairs.txt`, their images found under `images`."""
    pairs_file = Path(pairs_file)
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    first_number = 1
    if lines and len(lines[0]) <= 2:  # the `folds pairs-per-fold` header
        lines, first_number = lines[1:], 2
    pairs = []
    for number, fields in enumerate(lines, start=first_number):
        if len(fields) == 3:
            names = [(fields[0], fields[1]), (fields[0], fields[2])]
        elif len(fields) == 4:
            names = [(fields[0], fields[1]), (fields[2], fields[3])]
        else:
            raise VerificationSetError(
                f"{pairs_file}:{number}: expected 3 or 4 fields, got {fields}"
            )
        try:
            first, second = (pair_image(images, name, n) for name, n in names)
        except ValueError as exc:  # int() of an image number that is not one
            raise VerificationSetError(f"{pairs_file}:{number}: {exc}") from exc
        pairs.append(ImagePair(first, second, len(fields) == 3))
    return pairs


# --- the threshold at a false match rate ------------------------------------------------------


def false_match_rate(impostor: np.ndarray, threshold: float) -> float:
    """Share of impostor scores >= `threshold` (NaN without impostor scores)."""
    impostor = np.asarray(impostor)
    return float(np.mean(impostor >= threshold)) if len(impostor) else math.nan


def false_matches_allowed(impostor_pairs: int, fmr: float) -> int:
    """k = floor(fmr * n): how many of n impostor pairs may match at a false match rate <= fmr."""
    return math.floor(fmr * impostor_pairs + COUNT_TOLERANCE)


def threshold_at_fmr(impostor: np.ndarray, fmr: float) -> float:
    """The lowest threshold whose false match rate on `impostor` is at most `fmr` (edges: see
    the module docstring). Raises ValueError without impostor scores or for a negative fmr."""
    ranked = np.sort(np.asarray(impostor, dtype=np.float64).reshape(-1))[::-1]
    if len(ranked) == 0:
        raise ValueError("no impostor scores: a false match rate needs impostor pairs")
    if not fmr >= 0:
        raise ValueError(f"fmr must be >= 0, got {fmr}")
    allowed = false_matches_allowed(len(ranked), fmr)
    if allowed >= len(ranked):
        return LOWEST_COSINE
    return float(np.nextafter(ranked[allowed], np.inf))
