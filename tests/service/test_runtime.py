"""onnxruntime thread budget: several uvicorn workers share the CPUs instead of each taking
all of them (onnxruntime's default): on 2 cores, two workers served 1.0-1.1x one worker's
serial rate with two threads each and 1.6-1.7x with one each."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from synthetic_models import make_manifest_pack

from service import app as app_module
from service.app import create_app
from service.runtime import threads_per_worker
from service.settings import Settings


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr("service.runtime.os.sched_getaffinity", lambda pid: set(range(8)))


def test_one_worker_keeps_onnxruntime_default(eight_cpus):
    assert threads_per_worker(0, workers=1) == 0


def test_several_workers_divide_the_cpus_among_them(eight_cpus):
    assert threads_per_worker(0, workers=2) == 4
    assert threads_per_worker(0, workers=3) == 2
    assert threads_per_worker(0, workers=16) == 1, "never fewer than one thread"


def test_an_explicit_thread_count_is_kept(eight_cpus):
    assert threads_per_worker(3, workers=4) == 3
    assert threads_per_worker(5, workers=1) == 5


def test_the_app_opens_its_sessions_with_the_per_worker_budget(tmp_path, eight_cpus, monkeypatch):
    seen = []
    from_pack = app_module.FacePipeline.from_pack

    def spy(pack, options, runtime, *args, **kwargs):
        seen.append(runtime)
        return from_pack(pack, options, runtime, *args, **kwargs)

    monkeypatch.setattr(app_module.FacePipeline, "from_pack", spy)
    settings = Settings(
        pack_dir=make_manifest_pack(tmp_path / "pack"),
        data_dir=tmp_path / "data",
        workers=4,
        _env_file=None,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    assert [runtime.intra_op_threads for runtime in seen] == [2]
