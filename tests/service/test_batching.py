"""The micro-batcher (`service.faces.batching`) joins concurrent model calls and gives each
caller its own results, or the error, and a batched pipeline embeds as the direct one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.faces.batching import BatchingOptions, MicroBatcher
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions


def test_micro_batcher_joins_concurrent_submissions_into_one_call() -> None:
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [2 * item for item in items]

    batcher = MicroBatcher(double, BatchingOptions(max_batch=8, max_wait_ms=300))
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(batcher.submit, [i, 10 + i]) for i in range(3)]
            results = [future.result(timeout=10) for future in futures]
    finally:
        batcher.close()
    assert results == [[0, 20], [2, 22], [4, 24]]
    assert len(calls) == 1 and sorted(calls[0]) == [0, 1, 2, 10, 11, 12]


def test_micro_batcher_gives_the_error_to_every_caller_and_keeps_serving() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if min(items) < 0:
            raise ValueError("negative")
        return items

    batcher = MicroBatcher(fail_on_negative, BatchingOptions(max_batch=1))
    try:
        with pytest.raises(ValueError, match="negative"):
            batcher.submit([-1])
        assert batcher.submit([5]) == [5]
    finally:
        batcher.close()


def test_batched_pipeline_embeds_as_the_direct_one(tmp_path) -> None:
    pack = make_manifest_pack(tmp_path / "pack", [SyntheticFace.from_box((100, 120, 340, 400))])
    pipeline = FacePipeline.from_pack(load_pack(pack), PipelineOptions(), RuntimeOptions())
    photos = [encode(noise_image(seed=seed)) for seed in range(4)]
    direct = [pipeline.analyze(photo).faces[0].embedding for photo in photos]
    pipeline.enable_batching(BatchingOptions(max_batch=8, max_wait_ms=200))
    try:
        with ThreadPoolExecutor(4) as pool:
            batched = list(pool.map(lambda p: pipeline.analyze(p).faces[0].embedding, photos))
        assert max(pipeline._embed_batcher.batch_sizes) > 1
    finally:
        pipeline.close()
    for one, other in zip(direct, batched, strict=True):
        assert one == pytest.approx(other, abs=1e-5)
