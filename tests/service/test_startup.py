"""Start-up: probes answer while the models and gallery load in the background, and say so
when loading failed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

import service.app
from service.app import create_app
from service.settings import Settings
from service.workers import WorkerReadiness

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)


def _code(response) -> str:
    return response.json()["error"]["code"]


def _wait_ready(client: TestClient, seconds: float = 30.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = client.get("/readyz").status_code
        if status == 200:
            return status
        time.sleep(0.05)
    return status


def test_probes_answer_while_the_models_load_then_ready(tmp_path: Path, monkeypatch) -> None:
    pack = make_manifest_pack(tmp_path / "pack", [FACE])
    release = threading.Event()
    real_build = service.app.build_services

    def slow_build(settings, metrics):
        assert release.wait(30), "the test never released the load"
        return real_build(settings, metrics)

    monkeypatch.setattr(service.app, "build_services", slow_build)
    settings = Settings(pack_dir=pack, data_dir=tmp_path / "data", _env_file=None)
    photo = encode(noise_image(seed=1))
    with TestClient(create_app(settings, load_in_background=True)) as client:
        alive = client.get("/healthz")
        alive_head = client.head("/healthz")
        loading = client.get("/readyz")
        early = client.post("/detect", files={"image": ("p.png", photo, "image/png")})
        release.set()
        assert _wait_ready(client) == 200
        served = client.post("/detect", files={"image": ("p.png", photo, "image/png")})
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert alive_head.status_code == 200
    assert loading.status_code == 503 and _code(loading) == "not_ready"
    assert "not loaded yet" in loading.json()["error"]["message"]
    assert early.status_code == 503 and _code(early) == "not_ready"
    assert served.status_code == 200 and len(served.json()["faces"]) == 1


def test_failed_background_load_fails_liveness_with_the_reason(tmp_path: Path) -> None:
    settings = Settings(pack_dir=tmp_path / "missing", data_dir=tmp_path / "data", _env_file=None)
    with TestClient(create_app(settings, load_in_background=True)) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = client.get("/healthz")
        ready = client.get("/readyz")
    assert alive.status_code == 503 and _code(alive) == "not_ready"
    assert "start-up failed" in alive.json()["error"]["message"]
    assert ready.status_code == 503 and "start-up failed" in ready.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_head(app_client, tmp_path: Path, path: str) -> None:
    pack = make_manifest_pack(tmp_path / "pack", [FACE])
    with app_client(pack) as client:
        response = client.head(path)
    assert response.status_code == 200 and response.content == b""


def test_readyz_waits_for_every_worker(tmp_path: Path) -> None:
    """With several workers, a worker that loaded answers /readyz 503 until the others have:
    traffic a load balancer sends on its 200 must not meet a worker still loading."""
    pack = make_manifest_pack(tmp_path / "pack", [FACE])
    marks = tmp_path / "ready"
    marks.mkdir()
    readiness = WorkerReadiness(marks, expected=2)
    settings = Settings(pack_dir=pack, data_dir=tmp_path / "data", _env_file=None)
    other_worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with TestClient(
            create_app(settings, load_in_background=True, worker_readiness=readiness)
        ) as client:
            waiting = _wait_ready(client, seconds=2)
            alone = client.get("/readyz")
            (marks / str(other_worker.pid)).touch()  # the other worker finished loading
            both = client.get("/readyz")
            other_worker.kill()
            other_worker.wait()
            after_death = client.get("/readyz")
        assert sorted(p.name for p in marks.iterdir()) == [str(other_worker.pid)]
    finally:
        other_worker.kill()
        other_worker.wait()
    assert waiting == 503
    assert alone.status_code == 503 and _code(alone) == "not_ready"
    assert alone.json()["error"]["message"] == "1 of 2 workers have loaded their models"
    assert both.status_code == 200 and both.json()["status"] == "ready"
    assert after_death.status_code == 503  # a dead worker's mark does not count


def test_both_models_run_once_before_the_service_says_ready(tmp_path: Path, monkeypatch) -> None:
    pack = make_manifest_pack(tmp_path / "pack", [FACE])
    runs: list[str] = []
    real_warm_up = service.app.FacePipeline.warm_up

    def recording_warm_up(pipeline) -> None:
        detect, embed = pipeline.detector.detect, pipeline.embedder.embed
        pipeline.detector.detect = lambda image: runs.append("detect") or detect(image)
        pipeline.embedder.embed = lambda crops, **kw: runs.append("embed") or embed(crops, **kw)
        try:
            real_warm_up(pipeline)
        finally:
            del pipeline.detector.detect, pipeline.embedder.embed

    monkeypatch.setattr(service.app.FacePipeline, "warm_up", recording_warm_up)
    settings = Settings(pack_dir=pack, data_dir=tmp_path / "data", _env_file=None)
    app = create_app(settings, load_in_background=True)
    with TestClient(app) as client:
        assert _wait_ready(client) == 200
        assert runs == ["detect", "embed"]
        photo = {"image": ("a.png", encode(noise_image(seed=3)), "image/png")}
        assert client.post("/embed", files=photo).status_code == 200
        assert runs == ["detect", "embed"]  # requests do not warm up again
