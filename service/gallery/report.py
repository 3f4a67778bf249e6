"""The gallery report: what an operator checks before trusting 1:N answers.

One pass over the store gives the counts (identities, faces per identity, faces per model, the
stored face quality); a search of the loaded model's faces against the gallery finds
**suspected duplicates** (two identity ids whose faces match above a strict threshold: the same
person enrolled twice, which is a data-quality problem and inflates FPIR estimates); the FPIR
measurement (`service.gallery.fpir`) gives the impostor score tail and the thresholds at the
reported FPIRs for the current size. `python -m service gallery report` prints it,
`GET /gallery/report` answers it as JSON, `service.gallery.report_plot` draws FPIR against
threshold. Everything here is data (dataclasses); the edges format it.

Cost: the store is read once (every face, streamed: `GalleryStore.export`); the duplicate search
is one gallery search per face up to `max_faces`, a uniform random sample of that many faces
beyond (the report says so); the FPIR measurement is bounded by its own `probes`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import ServiceError
from service.gallery.fpir import REPORTED_FPIRS, FpirEstimate, FpirOptions, measure
from service.gallery.gallery import Gallery
from service.packs.thresholds import Calibration

# The strict threshold for suspected duplicates: one comparison passes it with a false match
# rate of at most this, when the pack was calibrated that low (`python -m service calibrate`).
DUPLICATE_FMR = 1e-5
# Otherwise: the pack's 1:1 threshold plus this margin. On the shared test photos (deepface and
# face_recognition sets, MobileFaceNet 128-d pack) the highest different-person score was 0.46
# against a pack threshold of 0.40 and same-person scores averaged 0.73: 0.55 sits above every
# impostor pair seen there and below most genuine ones.
DUPLICATE_MARGIN = 0.15
# Identities ranked per searched face: the own identity, then up to this many others (a person
# enrolled under more ids than this is still found: each copy finds some of the others). Each
# more costs about 15% more search time (measured at 6,000 faces).
DUPLICATE_CANDIDATES = 3
# Faces searched per gallery call.
SEARCH_BATCH = 256
# Faces read per store call while scanning.
SCAN_BATCH = 1_000
# Upper bounds of the faces-per-identity histogram's bins (the last bin is open).
HISTOGRAM_EDGES = (0, 1, 2, 3, 5, 10, 20, 50)
# Quantiles of the impostor tail; one is reported when the scores hold at least one score
# above it (n x (1 - q) >= 1).
TAIL_QUANTILES = (0.5, 0.9, 0.99, 0.999)
TAIL_TOP = 5


@dataclass(frozen=True)
class ReportOptions:
    """What the report searches. `max_faces` bounds the duplicate search's cost."""

    min_score: float | None = None  # None: the strict default (`strict_threshold`)
    max_faces: int = 20_000
    max_pairs: int = 100
    fpir_probes: int = FpirOptions.probes
    seed: int = 0


@dataclass(frozen=True)
class Spread:
    """Min, median and max of a set of values (None when the set is empty)."""

    count: int
    min: float | None
    median: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(0, None, None, None)
        return cls(len(values), min(values), float(statistics.median(values)), max(values))


@dataclass(frozen=True)
class HistogramBin:
    label: str  # "1", "4-5", "51+"
    count: int


@dataclass(frozen=True)
class FaceQualitySummary:
    """What the store keeps of each face's quality: the embedding's norm before normalisation
    (`quality`) and the detector's score. Quality levels (low/medium/high) are judged at
    enrolment and not stored; faces enrolled as embeddings have no detection (score 0)."""

    embedding_norm: Spread
    detection_score: Spread
    without_detection: int


@dataclass(frozen=True)
class DuplicatePair:
    """Two identities whose faces match above the strict threshold: best score and faces."""

    identity_a: str
    name_a: str
    face_a: str
    identity_b: str
    name_b: str
    face_b: str
    score: float


@dataclass(frozen=True)
class DuplicateSearch:
    min_score: float
    min_score_source: str
    faces_searched: int
    faces_of_model: int
    sampled: bool
    note: str
    pairs: list[DuplicatePair] = field(default_factory=list)
    pairs_found: int = 0  # before `max_pairs`
    unavailable: str | None = None


@dataclass(frozen=True)
class ScoreTail:
    """The high end of a set of impostor scores."""

    count: int
    quantiles: dict[str, float]  # "0.99" -> score
    top: list[float]


@dataclass(frozen=True)
class FpirRow:
    """The threshold at one target FPIR, or why it cannot be given."""

    target_fpir: float
    threshold: float | None = None
    fpir: float | None = None
    interval: tuple[float, float] | None = None
    method: str | None = None
    unsupported: str | None = None


@dataclass(frozen=True)
class FpirSection:
    gallery_size: int
    probes: int
    stranger_scores: ScoreTail  # each probe's best score against another identity
    pair_scores: ScoreTail  # faces of different probe identities
    thresholds: list[FpirRow]
    measured_at: float | None  # Unix time
    unavailable: str | None = None


@dataclass(frozen=True)
class GalleryReport:
    model_id: str
    identities: int
    faces: int
    faces_per_model: dict[str, int]
    faces_per_identity: Spread
    faces_per_identity_histogram: list[HistogramBin]
    quality: FaceQualitySummary
    duplicates: DuplicateSearch
    fpir: FpirSection
    threshold_1to1: float  # the default 1:1 threshold, marked on the plot


@dataclass(frozen=True)
class FaceSample:
    index_id: int
    face_id: str
    identity_id: str
    embedding: np.ndarray


def strict_threshold(pack_threshold: float, calibration: Calibration | None) -> tuple[float, str]:
    """(threshold, where it comes from) for suspected duplicates: the pack's calibrated threshold
    at the largest FMR <= DUPLICATE_FMR, else the 1:1 threshold + DUPLICATE_MARGIN."""
    entries = [e for e in (calibration.thresholds if calibration else []) if e.fmr <= DUPLICATE_FMR]
    if entries:
        best = max(entries, key=lambda entry: entry.fmr)
        return best.threshold, f"pack calibration at FMR {best.fmr:g}"
    return min(pack_threshold + DUPLICATE_MARGIN, 1.0), (
        f"1:1 threshold {pack_threshold:g} + {DUPLICATE_MARGIN:g} (pack not calibrated at FMR "
        f"{DUPLICATE_FMR:g} or lower)"
    )


def histogram(counts: list[int]) -> list[HistogramBin]:
    bins: list[HistogramBin] = []
    low = 0
    for high in HISTOGRAM_EDGES:
        label = str(high) if low == high else f"{low}-{high}"
        bins.append(HistogramBin(label, sum(1 for c in counts if low <= c <= high)))
        low = high + 1
    bins.append(HistogramBin(f"{low}+", sum(1 for c in counts if c >= low)))
    return bins


def score_tail(scores: np.ndarray) -> ScoreTail:
    values = np.sort(np.asarray(scores, dtype=np.float64))
    quantiles = {
        f"{q:g}": round(float(np.quantile(values, q)), 6)
        for q in TAIL_QUANTILES
        if len(values) * (1 - q) >= 1
    }
    return ScoreTail(len(values), quantiles, [round(float(s), 6) for s in values[::-1][:TAIL_TOP]])


@dataclass
class _Scan:
    """What one pass over the store collects."""

    face_counts: list[int] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    det_scores: list[float] = field(default_factory=list)
    per_model: dict[str, int] = field(default_factory=dict)
    faces_of_model: int = 0
    sample: list[FaceSample] = field(default_factory=list)


def _scan(gallery: Gallery, options: ReportOptions, on_faces: Callable[[int], None]) -> _Scan:
    """Read every identity and face once; keep a uniform sample (reservoir) of the loaded
    model's faces, at most `max_faces`."""
    scan = _Scan()
    rng = random.Random(options.seed)
    for exported in gallery.store.export(SCAN_BATCH):
        scan.face_counts.append(len(exported.faces))
        for face, vector in zip(exported.faces, exported.embeddings, strict=True):
            scan.norms.append(face.quality)
            scan.det_scores.append(face.det_score)
            scan.per_model[face.model_id] = scan.per_model.get(face.model_id, 0) + 1
            if face.model_id != gallery.model_id:
                continue
            scan.faces_of_model += 1
            sample = FaceSample(face.index_id, face.face_id, face.identity_id, vector)
            if len(scan.sample) < options.max_faces:
                scan.sample.append(sample)
            else:
                slot = rng.randrange(scan.faces_of_model)
                if slot < options.max_faces:
                    scan.sample[slot] = sample
        on_faces(len(exported.faces))
    return scan


def find_duplicates(
    gallery: Gallery,
    sample: list[FaceSample],
    min_score: float,
    on_searched: Callable[[int], None] = lambda n: None,
) -> dict[tuple[str, str], tuple[float, FaceSample]]:
    """Pairs of identities (sorted ids) whose faces score >= `min_score`: each searched face's
    best other identities; per pair the best score and the searched face that reached it."""
    pairs: dict[tuple[str, str], tuple[float, FaceSample]] = {}
    for start in range(0, len(sample), SEARCH_BATCH):
        batch = sample[start : start + SEARCH_BATCH]
        queries = np.stack([face.embedding for face in batch]).astype(np.float32)
        ranked = gallery.rank_identities(queries, DUPLICATE_CANDIDATES + 1)
        for face, candidates in zip(batch, ranked, strict=True):
            for identity_id, score in candidates:
                if identity_id == face.identity_id or score < min_score:
                    continue
                own = face.identity_id
                key = (own, identity_id) if own < identity_id else (identity_id, own)
                if key not in pairs or score > pairs[key][0]:
                    pairs[key] = (score, face)
        on_searched(len(batch))
    return pairs


def _pair(
    gallery: Gallery, key: tuple[str, str], score: float, probe: FaceSample
) -> DuplicatePair | None:
    """Name both identities and find the other identity's face that the probe matched."""
    other = key[1] if probe.identity_id == key[0] else key[0]
    faces, vectors = gallery.store.embeddings_of(other, gallery.model_id)
    first, second = gallery.store.get_identity(key[0]), gallery.store.get_identity(key[1])
    if not faces or first is None or second is None:
        return None  # deleted meanwhile
    matched = faces[int(np.argmax(vectors @ probe.embedding))].face_id
    face_of = {probe.identity_id: probe.face_id, other: matched}
    return DuplicatePair(
        identity_a=first.id,
        name_a=first.name,
        face_a=face_of[first.id],
        identity_b=second.id,
        name_b=second.name,
        face_b=face_of[second.id],
        score=round(score, 6),
    )


def _duplicates(
    gallery: Gallery,
    scan: _Scan,
    min_score: float,
    source: str,
    options: ReportOptions,
    on_searched: Callable[[int], None],
) -> DuplicateSearch:
    searched, total = len(scan.sample), scan.faces_of_model
    sampled = searched < total
    note = (
        f"a random sample of {searched} of the {total} faces of {gallery.model_id} was "
        "searched: a pair is found only when a drawn face belongs to one of the two (raise "
        "max_faces to search more)"
        if sampled
        else f"every face of {gallery.model_id} ({total}) was searched"
    )
    search = DuplicateSearch(
        min_score=round(min_score, 6),
        min_score_source=source,
        faces_searched=searched,
        faces_of_model=total,
        sampled=sampled,
        note=note,
    )
    try:
        found = find_duplicates(gallery, scan.sample, min_score, on_searched)
    except ServiceError as exc:  # e.g. faces of another model: the gallery refuses to search
        return dataclasses.replace(search, unavailable=exc.message)
    ordered = sorted(found.items(), key=lambda item: -item[1][0])
    pairs = [
        _pair(gallery, key, score, probe) for key, (score, probe) in ordered[: options.max_pairs]
    ]
    kept = [pair for pair in pairs if pair is not None]
    return dataclasses.replace(search, pairs=kept, pairs_found=len(found))


def fpir_section(estimate: FpirEstimate, calibration: Calibration | None) -> FpirSection:
    rows: list[FpirRow] = []
    for target in REPORTED_FPIRS:
        try:
            found = estimate.threshold(target, calibration)
        except ServiceError as exc:
            rows.append(FpirRow(target, unsupported=exc.message))
        else:
            rows.append(
                FpirRow(
                    target,
                    threshold=round(found.threshold, 6),
                    fpir=round(found.fpir, 6),
                    interval=(round(found.fpir_low, 6), round(found.fpir_high, 6)),
                    method=found.method,
                )
            )
    return FpirSection(
        gallery_size=estimate.gallery_size,
        probes=estimate.probes,
        stranger_scores=score_tail(estimate.stranger_scores),
        pair_scores=score_tail(estimate.pair_scores),
        thresholds=rows,
        measured_at=estimate.measured_at,
    )


def build_report(
    gallery: Gallery,
    *,
    threshold_1to1: float,
    calibration: Calibration | None,
    options: ReportOptions = ReportOptions(),
    estimate: FpirEstimate | None = None,
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
) -> tuple[GalleryReport, FpirEstimate | None]:
    """The report, and the FPIR estimate it used (measured here unless given; None when the
    gallery refused to be searched). `progress(stage, advanced, total)` follows the scan
    ("scan", faces) and the duplicate search ("search", faces)."""
    identities, faces = gallery.store.counts()
    scan = _scan(gallery, options, lambda n: progress("scan", n, faces))
    if options.min_score is not None:
        min_score, source = options.min_score, "asked (min_score)"
    else:
        min_score, source = strict_threshold(threshold_1to1, calibration)
    searched = len(scan.sample)
    duplicates = _duplicates(
        gallery, scan, min_score, source, options, lambda n: progress("search", n, searched)
    )
    try:
        if estimate is None:
            estimate = measure(gallery, FpirOptions(probes=options.fpir_probes, seed=options.seed))
        fpir = fpir_section(estimate, calibration)
    except ServiceError as exc:
        estimate = None
        empty = score_tail(np.zeros(0))
        fpir = FpirSection(0, 0, empty, empty, [], None, unavailable=exc.message)
    report = GalleryReport(
        model_id=gallery.model_id,
        identities=identities,
        faces=faces,
        faces_per_model=dict(sorted(scan.per_model.items())),
        faces_per_identity=Spread.of([float(c) for c in scan.face_counts]),
        faces_per_identity_histogram=histogram(scan.face_counts),
        quality=FaceQualitySummary(
            embedding_norm=Spread.of(scan.norms),
            detection_score=Spread.of([s for s in scan.det_scores if s > 0]),
            without_detection=sum(1 for s in scan.det_scores if s <= 0),
        ),
        duplicates=duplicates,
        fpir=fpir,
        threshold_1to1=threshold_1to1,
    )
    return report, estimate


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def format_text(report: GalleryReport) -> str:
    """The report for a terminal."""
    spread = report.faces_per_identity
    lines = [
        f"Gallery report (model {report.model_id})",
        f"  identities {report.identities}, faces {report.faces}; per model: "
        + (", ".join(f"{m} {n}" for m, n in report.faces_per_model.items()) or "none"),
        f"  faces per identity: min {_number(spread.min)}, median {_number(spread.median)}, "
        f"max {_number(spread.max)}",
        "    " + "  ".join(f"{b.label}: {b.count}" for b in report.faces_per_identity_histogram),
    ]
    quality = report.quality
    lines.append(
        f"  face quality (embedding norm): min {_number(quality.embedding_norm.min)}, median "
        f"{_number(quality.embedding_norm.median)}, max {_number(quality.embedding_norm.max)}; "
        f"detection score median {_number(quality.detection_score.median)}; "
        f"{quality.without_detection} enrolled as embeddings (no detection)"
    )
    duplicates = report.duplicates
    lines += [
        "",
        f"Suspected duplicates (score >= {_number(duplicates.min_score, 4)}: "
        f"{duplicates.min_score_source})",
        f"  {duplicates.note}",
    ]
    if duplicates.unavailable:
        lines.append(f"  not searched: {duplicates.unavailable}")
    elif not duplicates.pairs:
        lines.append("  none found")
    for pair in duplicates.pairs:
        lines.append(
            f"  {pair.score:.4f}  {pair.identity_a} ({pair.name_a}) face {pair.face_a}  <->  "
            f"{pair.identity_b} ({pair.name_b}) face {pair.face_b}"
        )
    if duplicates.pairs_found > len(duplicates.pairs):
        lines.append(f"  ... {duplicates.pairs_found} pairs in all (the best are listed)")
    fpir = report.fpir
    lines += [
        "",
        f"Impostor score tail and FPIR thresholds (1:1 threshold {report.threshold_1to1:g})",
    ]
    if fpir.unavailable:
        lines.append(f"  not measured: {fpir.unavailable}")
        return "\n".join(lines) + "\n"
    lines.append(
        f"  gallery size {fpir.gallery_size}, {fpir.probes} identities searched as strangers"
    )
    for label, tail in (
        ("stranger best scores", fpir.stranger_scores),
        ("impostor pairs", fpir.pair_scores),
    ):
        quantiles = ", ".join(f"q{q} {s:.4f}" for q, s in tail.quantiles.items())
        top = ", ".join(f"{s:.4f}" for s in tail.top)
        lines.append(f"  {label} ({tail.count}): {quantiles or 'too few'}; highest {top or '-'}")
    for row in fpir.thresholds:
        if row.unsupported:
            lines.append(f"  FPIR {row.target_fpir:g}: unsupported: {row.unsupported}")
        else:
            low, high = row.interval or (math.nan, math.nan)
            lines.append(
                f"  FPIR {row.target_fpir:g}: threshold {row.threshold:.4f} (measured FPIR "
                f"{row.fpir:.4g}, 95% {low:.4g}-{high:.4g}, {row.method})"
            )
    return "\n".join(lines) + "\n"
