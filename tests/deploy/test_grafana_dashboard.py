"""The Grafana dashboard and its provisioning: valid JSON, every query reads only metrics the
service exports, the panels the deployment promises exist, and Prometheus parses every query."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    COMPOSE_FILE,
    DASHBOARD_FILE,
    DASHBOARD_PROVIDER_FILE,
    DATASOURCE_FILE,
    PROMETHEUS_SERIES,
    dashboard,
    dashboard_expressions,
    exported_families,
    exported_metric_names,
    grafana_to_promql,
    iter_panels,
    promql_metric_names,
)

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the provisioning files")

QUANTILES = ("0.5", "0.95", "0.99")


def test_promql_name_extraction_keeps_metrics_and_drops_functions_labels_and_durations():
    expression = (
        'histogram_quantile(0.95, sum by (le, route) (rate(faceverify_x_bucket{job="a", '
        'route=~"/v.*"}[$__rate_interval] offset 5m))) / on (route) group_left '
        "sum without (code) (faceverify_y_total) > bool 1e3 and up"
    )
    assert promql_metric_names(expression) == {"faceverify_x_bucket", "faceverify_y_total", "up"}


def test_dashboard_is_valid_json_with_unique_panel_ids():
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = list(iter_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_every_dashboard_query_names_only_metrics_the_service_exports():
    exported = exported_metric_names() | PROMETHEUS_SERIES
    expressions = dashboard_expressions(dashboard())
    assert expressions
    for expression in expressions:
        names = promql_metric_names(expression)
        assert names, f"no metric name found in {expression!r}"
        unknown = names - exported
        assert not unknown, f"{expression!r} reads {unknown}, which the service does not export"


def test_every_service_metric_family_has_a_panel():
    used = set().union(*(promql_metric_names(e) for e in dashboard_expressions(dashboard())))
    unused = {
        family
        for family in exported_families()
        if not any(name == family or name.startswith(family + "_") for name in used)
    }
    assert not unused, f"metrics without a dashboard panel: {sorted(unused)}"


def _expressions_of(title_part: str) -> list[str]:
    panels = [p for p in iter_panels(dashboard()["panels"]) if title_part in p["title"]]
    assert panels, f"no panel titled like {title_part!r}"
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


@pytest.mark.parametrize(
    ("title_part", "histogram", "label"),
    [
        ("Request latency", "faceverify_request_duration_seconds_bucket", "route"),
        ("stage latency", "faceverify_stage_duration_seconds_bucket", "stage"),
    ],
)
def test_latency_panels_show_p50_p95_p99_per_label(title_part, histogram, label):
    expressions = _expressions_of(title_part)
    for quantile in QUANTILES:
        assert any(
            e.startswith(f"histogram_quantile({quantile},")
            and histogram in e
            and f"by (le, {label})" in e
            for e in expressions
        ), f"{title_part}: no p{quantile} by {label}"


def test_traffic_error_faces_and_gallery_panels_exist():
    assert any("by (route)" in e for e in _expressions_of("Requests/s"))
    assert any('status=~"5.."' in e for e in _expressions_of("Error rate"))
    assert any("faceverify_faces_detected_total" in e for e in _expressions_of("Faces/s"))
    gallery = " ".join(_expressions_of("Gallery size"))
    assert "faceverify_gallery_identities" in gallery and "faceverify_gallery_faces" in gallery


def test_panels_use_the_provisioned_datasource():
    provisioned = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    assert len(uids) == 1
    for panel in iter_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids, panel["title"]
            assert panel["datasource"]["uid"] in uids, panel["title"]


def test_dashboard_provider_loads_the_folder_compose_mounts_the_dashboard_on():
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    mounts = dict(
        reversed(volume.split(":")[:2]) for volume in compose["services"]["grafana"]["volumes"]
    )
    provider = yaml.safe_load(DASHBOARD_PROVIDER_FILE.read_text(encoding="utf-8"))
    folder = provider["providers"][0]["options"]["path"]
    assert mounts[folder] == "./deploy/grafana/dashboards"


def test_prometheus_parses_every_dashboard_query(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    rules = [
        {"record": f"faceverify:dashboard_query:{i}", "expr": grafana_to_promql(expression)}
        for i, expression in enumerate(dashboard_expressions(dashboard()))
    ]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_file_is_the_one_grafana_opens_first():
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert Path(home).name == DASHBOARD_FILE.name


# Panel and datasource types built into Grafana 12: nothing to download on a machine without
# internet (any other type is a plugin Grafana would have to fetch and install).
CORE_PANEL_TYPES = frozenset(
    {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap", "histogram",
     "piechart", "state-timeline", "status-history", "barchart", "logs", "nodeGraph", "trend",
     "xychart", "dashlist", "alertlist", "annolist", "news", "canvas", "geomap"}
)  # fmt: skip
CORE_DATASOURCE_TYPES = frozenset({"prometheus", "grafana", "datasource"})
# Grafana features that reach the internet, all switched off by the compose file.
GRAFANA_OFFLINE_SETTINGS = {
    "GF_ANALYTICS_REPORTING_ENABLED": "false",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
    "GF_NEWS_NEWS_FEED_ENABLED": "false",
    "GF_SECURITY_DISABLE_GRAVATAR": "true",
}


def test_dashboard_works_air_gapped_core_panels_only_and_no_external_links():
    board = dashboard()
    panels = list(iter_panels(board["panels"]))
    assert {panel["type"] for panel in panels} <= CORE_PANEL_TYPES
    datasources = [
        node["datasource"]["type"]
        for panel in panels
        for node in (panel, *panel.get("targets", []))
        if isinstance(node.get("datasource"), dict) and "type" in node["datasource"]
    ]
    assert set(datasources) <= CORE_DATASOURCE_TYPES
    assert "__requires" not in board or all(
        item.get("type") != "panel" or item["id"] in CORE_PANEL_TYPES
        for item in board["__requires"]
    )
    assert "://" not in DASHBOARD_FILE.read_text(), "the dashboard links to another host"
    provisioning = yaml.safe_load(DATASOURCE_FILE.read_text())
    assert {source["type"] for source in provisioning["datasources"]} <= CORE_DATASOURCE_TYPES


def test_compose_grafana_installs_no_plugin_and_never_calls_home():
    environment = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["environment"]
    assert not {"GF_INSTALL_PLUGINS", "GF_PLUGINS_PREINSTALL"} & set(environment)
    for name, value in GRAFANA_OFFLINE_SETTINGS.items():
        assert str(environment.get(name)).lower() == value, name
