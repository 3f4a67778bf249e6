"""Prometheus collectors of the service, created per app on its own registry.

Names are part of the public surface (the Grafana dashboard in `deploy/grafana` and the README
list them), so they are defined here once. With several uvicorn workers, set
`PROMETHEUS_MULTIPROC_DIR` to an empty writable folder and `/metrics` aggregates all workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

# Latency buckets (seconds): CPU inference of one face is 5-100 ms, a 1M-face search ~50 ms.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FACES_PER_IMAGE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
SIMILARITY_BUCKETS = tuple(round(-0.2 + 0.1 * i, 1) for i in range(13))  # -0.2 … 1.0
LIVENESS_BUCKETS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0 … 1.0

# Kinds of gallery storage failure (service.gallery.store): each series exists from the start at
# 0, so rate() and alerts see the first failure as an increase.
STORAGE_ERROR_KINDS = ("full", "busy", "readonly", "gone", "io", "corrupt")

# How big the gallery is: GET /status shows it only to `gallery:read` keys, so with API keys on
# the open scrape leaves these out (unless FACEVERIFY_METRICS_GALLERY_COUNTS says otherwise).
GALLERY_COUNT_METRICS = frozenset(
    {
        "faceverify_gallery_identities",
        "faceverify_gallery_faces",
        "faceverify_identify_fpir_probes",  # min(identities, probes): a size too
    }
)


class _Without:
    """A collector that yields another one's metric families but those named."""

    def __init__(
        self, source: CollectorRegistry | multiprocess.MultiProcessCollector, names: Iterable[str]
    ) -> None:
        self.source = source
        self.names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name not in self.names:
                yield family


@dataclass
class Metrics:
    """Every collector the service exports; build with `Metrics.create()`."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    stage_duration: Histogram
    faces_per_image: Histogram
    faces_detected: Counter
    errors: Counter
    model_info: Gauge
    gallery_identities: Gauge
    gallery_faces: Gauge
    index_info: Gauge
    search_duration: Histogram
    best_match_similarity: Histogram
    gallery_changes: Counter
    identify_fpir_threshold: Gauge
    identify_fpir_probes: Gauge
    storage_errors: Counter
    liveness_score: Histogram
    liveness_refusals: Counter
    # False: /metrics leaves out GALLERY_COUNT_METRICS (set from the settings by the app).
    gallery_counts_exported: bool = True

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry if registry is not None else CollectorRegistry()
        metrics = cls._collectors(reg)
        for kind in STORAGE_ERROR_KINDS:
            metrics.storage_errors.labels(kind)
        return metrics

    @classmethod
    def _collectors(cls, reg: CollectorRegistry) -> Metrics:
        return cls(
            registry=reg,
            requests=Counter(
                "faceverify_requests",
                "HTTP requests by route template, method and status code.",
                ["route", "method", "status"],
                registry=reg,
            ),
            request_duration=Histogram(
                "faceverify_request_duration_seconds",
                "HTTP request latency by route template.",
                ["route"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            stage_duration=Histogram(
                "faceverify_stage_duration_seconds",
                "Pipeline stage latency (decode, detect, align, embed); search has its own.",
                ["stage"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            faces_per_image=Histogram(
                "faceverify_faces_per_image",
                "Faces found per decoded image.",
                buckets=FACES_PER_IMAGE_BUCKETS,
                registry=reg,
            ),
            faces_detected=Counter(
                "faceverify_faces_detected", "Faces detected in all images.", registry=reg
            ),
            errors=Counter(
                "faceverify_errors",
                "Error responses by stable error code.",
                ["code"],
                registry=reg,
            ),
            model_info=Gauge(
                "faceverify_model_info",
                "The loaded model pack (value 1; details in labels).",
                ["pack", "model_id", "detector", "recognizer", "embedding_size", "provider"],
                registry=reg,
                multiprocess_mode="max",
            ),
            gallery_identities=Gauge(
                "faceverify_gallery_identities",
                "Enrolled identities.",
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            gallery_faces=Gauge(
                "faceverify_gallery_faces",
                "Enrolled faces (embeddings).",
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            index_info=Gauge(
                "faceverify_index_info",
                "The gallery's search index (value 1; type in labels).",
                ["type", "device"],
                registry=reg,
                multiprocess_mode="max",
            ),
            search_duration=Histogram(
                "faceverify_search_duration_seconds",
                "Gallery search latency per query batch.",
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            best_match_similarity=Histogram(
                "faceverify_best_match_similarity",
                "Best gallery similarity per identified face (watch it to spot drift).",
                buckets=SIMILARITY_BUCKETS,
                registry=reg,
            ),
            # No key label: /metrics is open to any scraper, key names stay in the audit log.
            gallery_changes=Counter(
                "faceverify_gallery_changes",
                "Gallery changes (audit trail) by action; the audit log names the key.",
                ["action"],
                registry=reg,
            ),
            identify_fpir_threshold=Gauge(
                "faceverify_identify_fpir_threshold",
                "/identify threshold for a target FPIR at the gallery's size, as last measured "
                "(NaN where the gallery cannot support the target).",
                ["target"],
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            identify_fpir_probes=Gauge(
                "faceverify_identify_fpir_probes",
                "Enrolled identities searched as strangers in the last FPIR measurement.",
                registry=reg,
                multiprocess_mode="mostrecent",
            ),
            storage_errors=Counter(
                "faceverify_storage_errors",
                "Gallery storage failures by kind (full, busy, readonly, gone, io, corrupt).",
                ["kind"],
                registry=reg,
            ),
            liveness_score=Histogram(
                "faceverify_liveness_score",
                "Averaged live probability per checked face (docs/liveness.md).",
                buckets=LIVENESS_BUCKETS,
                registry=reg,
            ),
            liveness_refusals=Counter(
                "faceverify_liveness_refusals",
                "Requests refused with liveness_failed (FACEVERIFY_LIVENESS=require).",
                registry=reg,
            ),
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text; aggregates all workers when PROMETHEUS_MULTIPROC_DIR is set."""
        hidden = () if self.gallery_counts_exported else GALLERY_COUNT_METRICS
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(_Without(merged, hidden)), CONTENT_TYPE_LATEST
        return generate_latest(_Without(self.registry, hidden)), CONTENT_TYPE_LATEST
