"""Concurrent identification searches joined into one index call answer exactly as searches
made alone, each cut to its own k."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gallery_support import clustered, open_test_gallery

from service.gallery.batched_search import BatchedSearch
from service.gallery.index import FaceIndex
from service.gallery.interface import SearchResult


def test_rows_of_concurrent_callers_are_searched_together_and_each_gets_its_own():
    _, faces, _ = clustered(200, 2, 32, seed=1)
    index = FaceIndex(32, "flat", use_gpu=False)
    index.add(np.arange(len(faces), dtype=np.int64), faces)
    gate = threading.Event()
    calls: list[int] = []

    def slow_search(queries: np.ndarray, k: int) -> SearchResult:
        calls.append(len(queries))
        gate.wait(5)  # the first call holds the searcher while the others queue up
        return index.search(queries, k)

    batched = BatchedSearch(slow_search)
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(batched.search, faces[i : i + 1], 3 + i) for i in range(6)]
            time.sleep(0.3)
            gate.set()
            results = [future.result(timeout=10) for future in futures]
    finally:
        batched.close()
    assert len(calls) < 6 and max(calls) > 1  # joined
    for i, found in enumerate(results):
        alone = index.search(faces[i : i + 1], 3 + i)
        assert found.ids.shape == (1, 3 + i)
        assert np.array_equal(found.ids, alone.ids)
        assert np.allclose(found.similarities, alone.similarities, atol=1e-6)


def test_a_small_gallery_still_says_it_was_searched_whole():
    _, faces, _ = clustered(3, 1, 16, seed=2)
    index = FaceIndex(16, "flat", use_gpu=False)
    index.add(np.arange(3, dtype=np.int64), faces)
    batched = BatchedSearch(index.search)
    try:
        found = batched.search(faces[:2], 10)
    finally:
        batched.close()
    assert found.ids.shape[1] < 10  # fewer columns than k: the whole gallery was searched


def test_gallery_identify_answers_the_same_with_and_without_joining(tmp_path: Path):
    centres, faces, labels = clustered(50, 3, 32, seed=3)
    gallery = open_test_gallery(tmp_path, dim=32)
    try:
        ids = [gallery.create_identity(f"p{i}").id for i in range(50)]
        for face, label in zip(faces, labels, strict=True):
            gallery.add_embedding(ids[label], face.tolist(), gallery.model_id)
        with ThreadPoolExecutor(8) as pool:
            joined = list(pool.map(lambda c: gallery.identify(c[None, :], 3), centres))
        assert max(gallery._batched.batch_sizes) >= 1
        alone = [gallery.identify(c[None, :], 3) for c in centres]
    finally:
        gallery.close()
    assert [[c.identity_id for c in r[0]] for r in joined] == [
        [c.identity_id for c in r[0]] for r in alone
    ]
    assert [r[0][0].identity_id for r in joined] == ids
