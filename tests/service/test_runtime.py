"""CPU budget: slots x onnxruntime intra-op threads = the CPUs of each uvicorn worker, instead
of each model run taking all of them (onnxruntime's default): on 2 cores, two workers served
1.0-1.1x one worker's serial rate with two threads each and 1.6-1.7x with one each."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from synthetic_models import make_manifest_pack

from service.api.admission import plan_slots
from service.app import create_app
from service.runtime import CPU, OPENVINO, RuntimeOptions, provider_entries, resolve_providers
from service.settings import Settings


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr("service.api.admission.os.sched_getaffinity", lambda pid: set(range(8)))


def test_auto_gives_one_single_thread_slot_per_cpu_of_the_worker(eight_cpus):
    assert plan_slots(0, 0, workers=1) == (8, 1)
    assert plan_slots(0, 0, workers=4) == (2, 1)
    assert plan_slots(0, 0, workers=16) == (1, 1), "never fewer than one slot or thread"


def test_explicit_threads_or_slots_divide_the_rest(eight_cpus):
    assert plan_slots(0, 4, workers=1) == (2, 4)
    assert plan_slots(2, 0, workers=1) == (2, 4)
    assert plan_slots(3, 5, workers=1) == (3, 5)


def test_the_app_opens_its_sessions_with_the_per_worker_budget(
    tmp_path, eight_cpus, opened_runtimes
):
    settings = Settings(
        pack_dir=make_manifest_pack(tmp_path / "pack"),
        data_dir=tmp_path / "data",
        workers=4,
        _env_file=None,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    assert [runtime.intra_op_threads for runtime in opened_runtimes] == [1]


def test_openvino_gets_the_slot_threads_and_full_precision():
    """OpenVINO's own default is 8 threads whatever the slots, and bf16 on CPUs with AMX."""
    entries = provider_entries([OPENVINO, CPU], RuntimeOptions("openvino", intra_op_threads=1))
    assert entries == [
        (OPENVINO, {"device_type": "CPU", "precision": "ACCURACY", "num_of_threads": "1"}),
        CPU,
    ]
    auto_threads = provider_entries([OPENVINO], RuntimeOptions("openvino"))
    assert auto_threads == [(OPENVINO, {"device_type": "CPU", "precision": "ACCURACY"})]
    assert provider_entries([CPU], RuntimeOptions("cpu", intra_op_threads=2)) == [CPU]


def test_a_provider_this_build_lacks_falls_back_to_cpu_with_a_hint(monkeypatch, caplog):
    monkeypatch.setattr("service.runtime.ort.get_available_providers", lambda: [CPU])
    with caplog.at_level("WARNING", logger="service.runtime"):
        assert resolve_providers("openvino") == [CPU]
    assert "OpenVINOExecutionProvider" in caplog.text
    assert "onnxruntime-openvino" in caplog.text
