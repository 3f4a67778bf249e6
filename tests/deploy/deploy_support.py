"""Helpers for the deployment tests: where the deployment files are, which metric names the
service exports, and which metric names a PromQL expression reads."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_COMPOSE_FILE = REPO_ROOT / "docker-compose.gpu.yml"
MILVUS_COMPOSE_FILE = REPO_ROOT / "docker-compose.milvus.yml"
LOCAL_COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.local.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "faceverify.json"
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "faceverify.yml"
HEALTHCHECK_SCRIPT = REPO_ROOT / "deploy" / "healthcheck.py"

# Prometheus' own series that a dashboard may read besides the service's.
PROMETHEUS_SERIES = frozenset({"up"})

# PromQL words that look like identifiers but are not metric names.
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan", "atan2", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that does not start inside a number (`5m`, `1e3`) or another word.
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def exported_metric_names() -> set[str]:
    """Every series name the service's collectors export once each has a sample.

    Read from the exposition text rather than derived from metric types: prometheus_client
    leaves out a histogram's `_sum` when a bucket bound is negative, for instance.
    `_created` series are left out: OpenMetrics scrapes turn them into created timestamps.
    """
    metrics = Metrics.create()
    for field in fields(Metrics):
        collector = getattr(metrics, field.name)
        if not isinstance(collector, MetricWrapperBase):
            continue
        # prometheus_client has no public accessor for a collector's label names.
        labelnames = collector._labelnames
        child = collector.labels(*("x",) * len(labelnames)) if labelnames else collector
        if isinstance(child, Histogram):
            child.observe(0.5)
        elif isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
    text = generate_latest(metrics.registry).decode()
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def exported_families() -> set[str]:
    """The service's metric family names (counters without `_total`)."""
    return {family.name for family in Metrics.create().registry.collect()}


def promql_metric_names(expression: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, label names, grouping labels or durations."""
    text = _STRING.sub('""', expression)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels of a dashboard, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_expressions(board: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in iter_panels(board["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def grafana_to_promql(expression: str) -> str:
    """Replace the Grafana variables the dashboard uses with values Prometheus accepts."""
    return expression.replace("$__rate_interval", "1m").replace("$instance", ".*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
