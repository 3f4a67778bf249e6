"""Identification thresholds by false-positive identification rate (FPIR), measured on the
gallery itself.

A stranger searched against N enrolled identities is a false positive when *any* of them
reaches the threshold. A 1:1 threshold with false match rate f lets strangers through about
1 - (1 - f)^N of the time, so a threshold that is right for /verify answers somebody's name for
most strangers once N is in the thousands. 1:N evaluations (NIST FRTE 1:N) report the miss rate
at a fixed FPIR for a given gallery size; here the threshold is chosen the same way, for the
gallery in use, from two estimates (docs/identification.md says why):

1. **Leave one identity out.** Sampled enrolled identities are each searched, with one of their
   faces, as strangers against all the others; the best score against another identity is what
   a stranger like them scores. FPIR(t) is the share of those best scores >= t, measured at
   gallery size N - 1 with no independence assumption. Usable when probes x FPIR >= 10 (ten
   expected false positives behind the threshold keep the FPIR it reaches within about 2x).
2. **The pack's calibration, independent scores.** While the gallery is too small for (1),
   the per-comparison FMR that gives the FPIR at size N is 1 - (1 - FPIR)^(1/N) if scores
   were independent; the pack's threshold calibrated at the largest FMR at or under it is used
   (`python -m service calibrate` measured it on many more pairs than a small gallery holds).
   Correlated scores make this optimistic, which is why (1) wins whenever it is supported.

Otherwise the FPIR is refused with what would support it. A leave-one-out threshold comes with
a 95% bootstrap interval of the FPIR it gives on the probes; a calibrated one with the FPIR its
measured and target FMR imply. The probes' between-identity pair scores are kept too: the
impostor tail the gallery report draws.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from service.errors import ErrorCode, ServiceError
from service.packs.thresholds import Calibration, FmrThreshold
from service.packs.verification_sets import threshold_at_fmr

# False positives a leave-one-out threshold must rest on: with k expected among the probes the
# FPIR actually reached varies by about 1/sqrt(k), so 10 keeps it within 2x of the target (3,
# the rule of three that calibration uses for FMRs, leaves it 2-3x off too often:
# bench/identify_at_scale.py).
MIN_STRANGER_ERRORS = 10.0

log = logging.getLogger(__name__)

Method = Literal["leave-one-out", "pack-calibration"]


# Probes whose pairwise scores are kept: 2,000 give about 2 M impostor pairs from a 16 MB score
# matrix (10,000 would need 400 MB and 50 M pairs for no use: the tail is only reported).
PAIR_PROBES = 2_000

# The FPIRs /status and /metrics report for the current gallery.
REPORTED_FPIRS = (1e-1, 1e-2, 1e-3)


@dataclass(frozen=True)
class FpirOptions:
    """How the estimate is made and kept fresh. `probes` bounds its cost: one gallery search
    per probe and a product of at most PAIR_PROBES x PAIR_PROBES, whatever the gallery's size."""

    probes: int = 10_000
    bootstrap_rounds: int = 200
    refresh_growth: float = 0.05  # re-measure when the faces grew or shrank by this share
    refresh_interval_s: float = 30.0  # how often the background job looks at the gallery
    seed: int = 0


@dataclass(frozen=True)
class FpirThreshold:
    """A threshold for `target_fpir` at `gallery_size`, and the FPIR it gives on the probes."""

    target_fpir: float
    threshold: float
    fpir: float  # measured on the probes (leave-one-out) or implied by the pairs
    fpir_low: float
    fpir_high: float
    method: Method
    gallery_size: int
    probes: int

    @property
    def source(self) -> str:
        """How an answer names it: `fpir:0.01@n=12034`."""
        return f"fpir:{self.target_fpir:g}@n={self.gallery_size}"


@dataclass(frozen=True)
class FpirEstimate:
    """What one measurement of the gallery saw."""

    gallery_size: int  # identities the probes were searched against, plus one
    faces: int  # faces in the gallery when measured
    stranger_scores: np.ndarray  # (K,) each probe's best score against another identity
    pair_scores: np.ndarray  # (M,) scores of faces of different probe identities
    changes: int = 0  # the view's `changes()` when measured
    measured_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    bootstrap_rounds: int = 200
    seed: int = 0

    @property
    def probes(self) -> int:
        return len(self.stranger_scores)

    def threshold(
        self, target_fpir: float, calibration: Calibration | None = None
    ) -> FpirThreshold:
        """The lowest threshold whose FPIR is at most `target_fpir` at this gallery size;
        `ServiceError(VALIDATION_ERROR)` saying what would support it when nothing does."""
        if not 0.0 < target_fpir < 1.0:
            raise ServiceError(ErrorCode.VALIDATION_ERROR, "target_fpir must be in (0, 1)")
        scores = self.stranger_scores
        if len(scores) * target_fpir >= MIN_STRANGER_ERRORS:
            threshold = threshold_at_fmr(scores, target_fpir)
            fpir = float(np.mean(scores >= threshold))
            rng = np.random.default_rng(self.seed)
            low, high = _bootstrap(scores, threshold, self.bootstrap_rounds, rng)
            return FpirThreshold(
                target_fpir, threshold, fpir, low, high, "leave-one-out",
                self.gallery_size, len(scores),
            )  # fmt: skip
        fmr = per_comparison_fmr(target_fpir, self.gallery_size)
        entry = _calibrated_at_most(calibration, fmr)
        if entry is not None:
            low, high = entry.measured_fmr, entry.fmr
            return FpirThreshold(
                target_fpir, entry.threshold, fpir_at_size(entry.measured_fmr, self.gallery_size),
                fpir_at_size(min(low, high), self.gallery_size),
                fpir_at_size(max(low, high), self.gallery_size),
                "pack-calibration", self.gallery_size, len(scores),
            )  # fmt: skip
        probes_needed = math.ceil(MIN_STRANGER_ERRORS / target_fpir)
        calibrated = (
            ", ".join(f"{value:g}" for value in calibration.available_fmrs())
            if calibration is not None and calibration.thresholds
            else "none"
        )
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR,
            f"target_fpir {target_fpir:g} cannot be measured on this gallery of "
            f"{self.gallery_size} identities: it needs {probes_needed} enrolled identities "
            f"searched as strangers (there are {len(scores)}), or a pack calibrated at a false "
            f"match rate of {fmr:.2g} or less (calibrated: {calibrated}); ask for a larger "
            "target_fpir, calibrate the pack on more pairs, or give a threshold",
        )

    def summary(
        self, targets: tuple[float, ...], calibration: Calibration | None = None
    ) -> dict[str, object]:
        """For /status: size, probes, when, and the threshold at each target (or why not)."""
        thresholds: dict[str, object] = {}
        for target in targets:
            try:
                found = self.threshold(target, calibration)
            except ServiceError as exc:
                thresholds[f"{target:g}"] = {"unsupported": exc.message}
            else:
                thresholds[f"{target:g}"] = {
                    "threshold": round(found.threshold, 6),
                    "fpir": round(found.fpir, 6),
                    "interval": [round(found.fpir_low, 6), round(found.fpir_high, 6)],
                    "method": found.method,
                }
        return {
            "gallery_size": self.gallery_size,
            "probes": self.probes,
            "impostor_pairs": len(self.pair_scores),
            "measured_at": self.measured_at,
            "duration_s": round(self.duration_s, 3),
            "thresholds": thresholds,
        }


def _calibrated_at_most(calibration: Calibration | None, fmr: float) -> FmrThreshold | None:
    """The pack's calibrated threshold of the largest target FMR that is at most `fmr`."""
    if calibration is None:
        return None
    below = [entry for entry in calibration.thresholds if entry.fmr <= fmr * (1 + 1e-9)]
    return max(below, key=lambda entry: entry.fmr, default=None)


def per_comparison_fmr(fpir: float, gallery_size: int) -> float:
    """The FMR per comparison that gives `fpir` against `gallery_size` independent identities:
    1 - (1 - FPIR)^(1/N)."""
    return -math.expm1(math.log1p(-fpir) / max(gallery_size, 1))


def fpir_at_size(fmr: float, gallery_size: int) -> float:
    """FPIR against `gallery_size` independent identities at a per-comparison FMR:
    1 - (1 - FMR)^N."""
    if fmr >= 1.0:
        return 1.0
    return -math.expm1(max(gallery_size, 1) * math.log1p(-fmr))


def _bootstrap(
    scores: np.ndarray, threshold: float, rounds: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% percentile interval of the share of `scores` >= `threshold`, resampling scores."""
    hits = (scores >= threshold).astype(np.float64)
    if rounds <= 0 or len(hits) == 0:
        rate = float(hits.mean()) if len(hits) else math.nan
        return rate, rate
    # Resampling n Bernoulli draws is a binomial draw of the same rate.
    rates = rng.binomial(len(hits), hits.mean(), size=rounds) / len(hits)
    low, high = np.percentile(rates, [2.5, 97.5])
    return float(low), float(high)


# --- measuring a gallery ---------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    identity_id: str
    embedding: np.ndarray  # (d,) unit norm


def stranger_scores(
    probes: list[Probe], search: Callable[[np.ndarray, int], list[list[tuple[str, float]]]]
) -> np.ndarray:
    """Each probe's best similarity to an identity other than its own. `search(queries, k)`
    ranks identities per query (best face each), as `Gallery.identify` does."""
    if not probes:
        return np.zeros(0, dtype=np.float64)
    queries = np.stack([probe.embedding for probe in probes]).astype(np.float32)
    ranked = search(queries, 2)  # its own identity is one of the top two, or absent
    best = []
    for probe, candidates in zip(probes, ranked, strict=True):
        others = [
            similarity for identity, similarity in candidates if identity != probe.identity_id
        ]
        if others:
            best.append(others[0])
    return np.asarray(best, dtype=np.float64)


def pair_scores(probes: list[Probe]) -> np.ndarray:
    """Scores of every pair of different identities among the first `PAIR_PROBES` probes (one
    face each): the impostor tail the gallery report shows."""
    probes = probes[:PAIR_PROBES]
    if len(probes) < 2:
        return np.zeros(0, dtype=np.float64)
    vectors = np.stack([probe.embedding for probe in probes]).astype(np.float32)
    owners = np.array([probe.identity_id for probe in probes])
    rows, cols = np.triu_indices(len(probes), k=1)
    different = owners[rows] != owners[cols]
    gram = np.clip(vectors @ vectors.T, -1.0, 1.0)  # at most PAIR_PROBES squared
    return gram[rows[different], cols[different]].astype(np.float64)


class GalleryView(Protocol):
    """What measuring needs from a gallery: its size, a sample of identities with one face
    each, and its identification search. `service.gallery.Gallery` provides it."""

    def counts(self) -> tuple[int, int]:
        """(identities, faces) in the gallery; may cost a count over the store."""
        ...

    def changes(self) -> int:
        """Faces added or deleted through this process so far (free to read)."""
        ...

    def sample_probes(self, count: int, rng: random.Random) -> list[Probe]: ...

    def rank_identities(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to `top_k` (identity id, similarity of its best face), best first."""
        ...


def measure(view: GalleryView, options: FpirOptions = FpirOptions()) -> FpirEstimate:
    """Search `options.probes` sampled identities as strangers against the rest."""
    started = time.perf_counter()
    changes = view.changes()
    size, faces = view.counts()
    probes = view.sample_probes(options.probes, random.Random(options.seed))
    estimate = FpirEstimate(
        gallery_size=size,
        faces=faces,
        changes=changes,
        stranger_scores=stranger_scores(probes, view.rank_identities),
        pair_scores=pair_scores(probes),
        duration_s=time.perf_counter() - started,
        bootstrap_rounds=options.bootstrap_rounds,
        seed=options.seed,
    )
    return estimate


class FpirCalibrator:
    """Keeps an `FpirEstimate` of the gallery fresh, off the request path: a background thread
    re-measures when the gallery's size moved by `refresh_growth` since the last measurement.
    Each worker process runs its own (the measurement is bounded by `probes`); it starts with
    the first request that asks for an FPIR, or at start-up when one is the default."""

    def __init__(
        self,
        view: GalleryView,
        options: FpirOptions = FpirOptions(),
        on_measured: Callable[[FpirEstimate], None] | None = None,
    ) -> None:
        self._view = view
        self.options = options
        self._on_measured = on_measured
        self._estimate: FpirEstimate | None = None
        self._lock = threading.Lock()  # one measurement at a time
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def estimate(self) -> FpirEstimate | None:
        return self._estimate

    def refresh(self) -> FpirEstimate:
        """Measure now (also what the background thread calls)."""
        with self._lock:
            return self._measure()

    def _measure(self) -> FpirEstimate:
        estimate = measure(self._view, self.options)
        self._estimate = estimate
        self.last_error = None
        if self._on_measured is not None:
            self._on_measured(estimate)
        log.info(
            "FPIR estimate: %d identities, %d probes, %d impostor pairs in %.1f s",
            estimate.gallery_size,
            estimate.probes,
            len(estimate.pair_scores),
            estimate.duration_s,
        )
        return estimate

    def current(self) -> FpirEstimate:
        """The estimate to decide with. The first call measures (a call that comes while the
        background thread measures waits for it), and so does a call after this process
        changed as many faces as the gallery had; otherwise calls get the last estimate at
        once, and changes past `refresh_growth` wake the thread to measure again (it also
        counts the gallery every `refresh_interval_s`, for other processes' changes). The
        answer names the size it was measured at."""
        self.start()
        estimate = self._estimate
        if estimate is None or self._changed(estimate) > estimate.faces:
            with self._lock:  # measured by the background thread meanwhile, or measure now
                current = self._estimate
                if current is None or self._changed(current) > current.faces:
                    return self._measure()
                return current
        if self._changed(estimate) > self.options.refresh_growth * estimate.faces:
            self._wake.set()
        return estimate

    def _changed(self, estimate: FpirEstimate) -> int:
        return self._view.changes() - estimate.changes

    def _stale(self) -> bool:
        """Whether the gallery moved past `refresh_growth` since the last measurement (counts
        it: for the background thread only)."""
        estimate = self._estimate
        if estimate is None:
            return True
        _, faces = self._view.counts()
        return abs(faces - estimate.faces) > self.options.refresh_growth * max(estimate.faces, 1)

    def start(self) -> None:
        """Start the background thread (once); the first `current()` starts it too, so a
        service that never asks for an FPIR never spends a measurement."""
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="fpir-calibrator", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:  # a request may have measured meanwhile
                    if self._stale():
                        self._measure()
            except Exception as exc:  # the next round tries again; /status shows the reason
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("FPIR estimate failed: %s", self.last_error)
            self._wake.wait(self.options.refresh_interval_s)
            self._wake.clear()
