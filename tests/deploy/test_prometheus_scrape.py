"""A real Prometheus server scrapes the real service: the target is up, every metric name the
service exports is queryable through Prometheus' HTTP API, and Prometheus accepts every query
of the Grafana dashboard.

The service runs as `python -m service serve` on a synthetic model pack; Prometheus is
Debian's `prometheus` binary with a 1 s scrape interval and a temporary storage folder. Both
are killed at the end. Skipped when the binary is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from deploy_support import (
    REPO_ROOT,
    dashboard,
    dashboard_expressions,
    exported_metric_names,
    free_port,
    grafana_to_promql,
    iter_panels,
)
from synthetic_models import SyntheticFace, make_pack_folder

# Start-up imports onnxruntime, opencv and faiss and loads the pack: ~5 s on 2 busy cores.
SERVICE_START_LIMIT_S = 30.0
PROMETHEUS_START_LIMIT_S = 15.0
# With a 1 s scrape interval every new series shows up within a few seconds.
SCRAPE_LIMIT_S = 20.0
POLL_INTERVAL_S = 0.25
REQUEST_TIMEOUT_S = 10.0
SCRAPE_INTERVAL = "1s"


def png_photo(seed: int) -> bytes:
    """A 640 x 640 PNG of smooth random colours (the synthetic detector finds a face in any)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", cv2.resize(small, (640, 640), interpolation=cv2.INTER_CUBIC))
    assert ok
    return buffer.tobytes()


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def multipart(files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "faceverify-test-boundary"
    parts = []
    for field, content in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{field}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wait_for(condition: Callable[[], bool], limit_s: float, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"{what}: process exited with {process.returncode}:\n{output[-3000:]}")
        try:
            if condition():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"{what}: not within {limit_s} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


@contextmanager
def running(
    command: list[str],
    cwd: Path,
    env: dict[str, str] | None,
    port: int,
    ready_path: str,
    limit_s: float,
) -> Iterator[str]:
    """Start `command`, wait until `ready_path` answers 200 on `port`, yield its base URL,
    and stop the process afterwards."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: http("GET", f"{url}{ready_path}")[0] == 200,
            limit_s,
            f"{Path(command[0]).name} {ready_path}",
            process,
        )
        yield url
    finally:
        stop(process)


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian: apt-get install -y prometheus)")
    return binary


@pytest.fixture
def service_url(tmp_path: Path) -> Iterator[str]:
    """`python -m service serve` on 127.0.0.1 with a synthetic pack that finds one face."""
    pack = make_pack_folder(
        tmp_path / "pack", [SyntheticFace.from_box((200.0, 160.0, 440.0, 460.0))]
    )
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "FACEVERIFY_PACK_DIR": str(pack),
        "FACEVERIFY_DATA_DIR": str(tmp_path / "data"),
        "FACEVERIFY_HOST": "127.0.0.1",
        "FACEVERIFY_PORT": str(port),
        "FACEVERIFY_WORKERS": "1",
        "FACEVERIFY_LOG_LEVEL": "warning",
        "FACEVERIFY_ENROL_QUALITY": "off",  # the enrolled photo is smooth noise, not a face
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # cwd=tmp_path: no stray .env is read
    with running(
        [sys.executable, "-m", "service", "serve"],
        tmp_path,
        env,
        port,
        "/readyz",
        SERVICE_START_LIMIT_S,
    ) as url:
        yield url


def exercise(url: str) -> None:
    """Requests that give every collector a sample: verify, a client error, enrol, identify
    (also by FPIR)."""
    image = png_photo(seed=1)
    body, headers = multipart({"image1": image, "image2": png_photo(seed=2)})
    status, answer = http("POST", f"{url}/verify", body, headers)
    assert status == 200, answer
    body, headers = multipart({"image1": b"not an image", "image2": image})
    assert http("POST", f"{url}/verify", body, headers)[0] == 400
    status, answer = http(
        "POST", f"{url}/identities", b'{"name": "synthetic"}', {"Content-Type": "application/json"}
    )
    assert status == 201, answer
    identity = json.loads(answer)["id"]
    body, headers = multipart({"image": image})
    status, answer = http("POST", f"{url}/identities/{identity}/faces", body, headers)
    assert status == 201, answer
    status, answer = http("POST", f"{url}/identify", body, headers)
    assert status == 200, answer
    # An FPIR asked for measures the gallery (one identity supports none: 422, NaN gauges).
    status, answer = http("POST", f"{url}/identify?target_fpir=0.1", body, headers)
    assert status == 422, answer


@pytest.fixture
def prometheus_url(prometheus_binary: str, service_url: str, tmp_path: Path) -> Iterator[str]:
    target = urllib.parse.urlsplit(service_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
        "scrape_configs:\n"
        "  - job_name: faceverify\n"
        f"    static_configs:\n      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    port = free_port()
    command = [
        prometheus_binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(command, tmp_path, None, port, "/-/ready", PROMETHEUS_START_LIMIT_S) as url:
        yield url


def until_series(prometheus: str, query: str) -> None:
    """Wait until `query` returns a series (a scrape has brought it in)."""
    deadline = time.monotonic() + SCRAPE_LIMIT_S
    while not api(prometheus, "query", query=query)["result"]:
        if time.monotonic() > deadline:
            pytest.fail(f"{query} has no series after {SCRAPE_LIMIT_S} s")
        time.sleep(POLL_INTERVAL_S)


def panel_queries(title: str) -> dict[str, str]:
    """The PromQL of one dashboard panel's queries, by legend (or refId)."""
    panel = next(p for p in iter_panels(dashboard()["panels"]) if p.get("title") == title)
    return {
        target.get("legendFormat") or target["refId"]: grafana_to_promql(target["expr"])
        for target in panel["targets"]
    }


def api(prometheus: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    status, body = http("GET", f"{prometheus}/api/v1/{path}?{query}")
    payload = json.loads(body)
    assert status == 200 and payload["status"] == "success", payload
    return payload["data"]


def test_prometheus_scrapes_the_service_and_can_query_every_exported_metric(
    service_url, prometheus_url
):
    exercise(service_url)
    expected = exported_metric_names()

    def target_up() -> bool:
        result = api(prometheus_url, "query", query='up{job="faceverify"}')["result"]
        return len(result) == 1 and result[0]["value"][1] == "1"

    def all_names_present() -> bool:
        return expected <= set(api(prometheus_url, "label/__name__/values"))

    deadline = time.monotonic() + SCRAPE_LIMIT_S
    while not (target_up() and all_names_present()):
        if time.monotonic() > deadline:
            present = set(api(prometheus_url, "label/__name__/values"))
            pytest.fail(
                f"after {SCRAPE_LIMIT_S} s: up={target_up()}, missing {sorted(expected - present)}"
            )
        time.sleep(POLL_INTERVAL_S)

    for name in sorted(expected):
        result = api(prometheus_url, "query", query=f'{name}{{job="faceverify"}}')["result"]
        assert result, f"{name} has no series"
    verify = api(
        prometheus_url,
        "query",
        query='faceverify_requests_total{job="faceverify", route="/verify", status="200"}',
    )["result"]
    assert [float(series["value"][1]) for series in verify] == [1.0]

    for expression in dashboard_expressions(dashboard()):
        api(prometheus_url, "query", query=grafana_to_promql(expression))


def test_every_dashboard_panel_shows_data_after_traffic(service_url, prometheus_url):
    """What Grafana would draw: every dashboard query returns series once the service has
    served traffic, the error-rate panel reads 0 (not "no data") for 5xx and more than 0 for
    the 4xx the traffic contained, and requests/s by route is positive."""
    # Two rounds of traffic with a scrape between them, so that every rate() sees its counters
    # increase. (Prometheus applies new targets every 5 s, so the first scrape comes late.)
    exercise(service_url)
    until_series(prometheus_url, 'faceverify_requests_total{job="faceverify", route="/identify"}')
    exercise(service_url)
    queries = [grafana_to_promql(expr) for expr in dashboard_expressions(dashboard())]
    error_rate = panel_queries("Error rate")
    (by_route,) = panel_queries("Requests/s by route").values()

    def results(query: str) -> list[dict[str, Any]]:
        return api(prometheus_url, "query", query=query)["result"]

    def route_rates() -> dict[str, float]:
        return {s["metric"]["route"]: float(s["value"][1]) for s in results(by_route)}

    # Until the scrape after the second round is in, the rates may still read 0.
    deadline = time.monotonic() + SCRAPE_LIMIT_S
    while (missing := [query for query in queries if not results(query)]) or not (
        route_rates().get("/verify", 0.0) > 0 and route_rates().get("/identify", 0.0) > 0
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"after {SCRAPE_LIMIT_S} s: no data from {missing}, {route_rates()=}")
        time.sleep(POLL_INTERVAL_S)

    def value(query: str) -> float:
        (series,) = results(query)
        return float(series["value"][1])

    assert value(error_rate["5xx"]) == 0.0
    assert 0.0 < value(error_rate["4xx"]) < 1.0
