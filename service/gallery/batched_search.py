"""Concurrent identification searches joined into one index search.

Every /identify searches the gallery, and an exact (flat) search reads every enrolled vector
once per call: at 1 M faces of 512 floats that is 2 GB of memory traffic, whether the call holds
one query or thirty-two, because the index multiplies a block of queries with the gallery in one
pass. Searched one by one (the index is used by one thread at a time), sixteen concurrent
requests read the gallery sixteen times; joined, they read it once. Milvus likewise answers one
request with many vectors for little more than one.

`BatchedSearch` wraps a search function with the pipeline's `MicroBatcher`: the query rows of
requests that arrive while a search runs are searched together in the next call, with the
largest `k` any of them asked for, and each request gets back its own rows cut to its own `k`
(so "fewer columns than k" still means "the whole gallery was searched"). With no concurrent
request nothing waits (`max_wait_ms` 0): only work already queued is joined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.faces.batching import BatchingOptions, MicroBatcher
from service.gallery.interface import SearchResult

# Query rows joined into one search at most: the flat index multiplies 32 at a time
# (index.EXACT_QUERY_BLOCK), so two such blocks per call keep the score matrix bounded.
DEFAULT_MAX_ROWS = 64


@dataclass(frozen=True)
class _Row:
    vector: np.ndarray  # (d,)
    k: int


class BatchedSearch:
    """`search(queries, k)` with the rows of concurrent callers searched in one call."""

    def __init__(
        self,
        search: Callable[[np.ndarray, int], SearchResult],
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self._search = search
        self._batcher: MicroBatcher[_Row, tuple[np.ndarray, np.ndarray]] = MicroBatcher(
            self._run, BatchingOptions(max_batch=max_rows, max_wait_ms=0.0), "search-batcher"
        )

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        rows = [_Row(np.asarray(row, dtype=np.float32), k) for row in queries]
        if not rows:
            return self._search(queries, k)
        found = self._batcher.submit(rows)
        width = min(len(similarities) for similarities, _ in found)
        return SearchResult(
            np.stack([similarities[:width] for similarities, _ in found]),
            np.stack([ids[:width] for _, ids in found]),
        )

    def _run(self, rows: list[_Row]) -> list[tuple[np.ndarray, np.ndarray]]:
        widest = max(row.k for row in rows)
        found = self._search(np.stack([row.vector for row in rows]), widest)
        return [
            (found.similarities[i, : row.k], found.ids[i, : row.k]) for i, row in enumerate(rows)
        ]

    @property
    def batch_sizes(self) -> list[int]:
        """Rows per search of the last calls (tests, debugging)."""
        return self._batcher.batch_sizes

    def close(self) -> None:
        self._batcher.close()
