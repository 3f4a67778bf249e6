"""Admission control (`service.api.admission`) bounds concurrent pipeline runs and queued
requests, and answers 503 `overloaded` with Retry-After beyond them instead of piling work up in
memory."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.api.admission import InferenceScheduler, SchedulerOptions
from service.errors import ErrorCode, ServiceError


def test_runs_at_most_slots_at_once_and_refuses_beyond_the_queue() -> None:
    async def scenario() -> tuple[int, ServiceError]:
        scheduler = InferenceScheduler(2, SchedulerOptions(queue_limit=1, retry_after_s=3))
        release = threading.Event()
        running, peak = 0, 0
        lock = threading.Lock()

        def work() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            release.wait(5)
            with lock:
                running -= 1

        tasks = [asyncio.create_task(scheduler.run(work)) for _ in range(3)]
        deadline = time.monotonic() + 10
        while (scheduler.in_flight < 3 or running < 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # a third run, were it let through, would start now
        with pytest.raises(ServiceError) as refused:
            await scheduler.run(work)
        release.set()
        await asyncio.gather(*tasks)
        assert scheduler.in_flight == 0
        return peak, refused.value

    peak, error = asyncio.run(scenario())
    assert peak == 2
    assert error.code is ErrorCode.OVERLOADED
    assert error.headers == {"Retry-After": "3"}


def test_full_queue_answers_503_overloaded_with_retry_after(app_client, tmp_path) -> None:
    pack = make_manifest_pack(tmp_path / "pack", [SyntheticFace.from_box((100, 120, 340, 400))])
    photo = encode(noise_image(seed=1))
    release = threading.Event()
    with app_client(pack, inference_slots=1, queue_limit=0) as client:
        pipeline = client.app.state.services.pipeline
        detect = pipeline.detect

        def slow_detect(data):
            release.wait(10)
            return detect(data)

        pipeline.detect = slow_detect
        scheduler = client.app.state.services.scheduler
        files = {"image": ("a.png", photo, "image/png")}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/detect", files=files)
            deadline = time.monotonic() + 30
            while scheduler.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/detect", files=files)
            release.set()
            assert first.result(timeout=30).status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["Retry-After"] == "1"
