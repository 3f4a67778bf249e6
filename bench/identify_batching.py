"""Concurrent /identify searches, one by one or joined into one index search.

The gallery's search path as the service runs it: an exact FAISS index (the service's own
`FaceIndex`, flat) used by one thread at a time behind a lock (as `IndexSync` does), searched by
`--concurrency` client threads, each sending one face per request for `--seconds`. Unbatched,
each request searches alone; batched, requests that arrive while a search runs are searched
together (`service.gallery.batched_search.BatchedSearch`, what the service uses). Both modes run
back to back in the same process on the same index, so their ratio is what to read (this
machine is shared). Answers are compared: the batched search returns the same ids and
similarities as the direct one.

Embeddings are clustered like face embeddings (an identity centre plus noise, renormalised); a
flat search's cost does not depend on that, only on N x d.

    python bench/identify_batching.py                     # 100k and 1M faces, 512-d, 16 clients
    python bench/identify_batching.py --sizes 100000 --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from service.gallery.batched_search import BatchedSearch
from service.gallery.index import FaceIndex
from service.gallery.interface import SearchResult

GENERATION_CHUNK = 100_000
TOP_K = 20  # what /identify asks of the index for top_k=5 (4 faces per identity wanted)


def clustered(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((count, dim), np.float32)
    centres = rng.standard_normal((max(count // 4, 1), dim)).astype(np.float32)
    for start in range(0, count, GENERATION_CHUNK):
        n = min(GENERATION_CHUNK, count - start)
        picked = centres[rng.integers(0, len(centres), n)]
        block = picked + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def run_clients(
    search: Callable[[np.ndarray, int], SearchResult],
    queries: np.ndarray,
    concurrency: int,
    seconds: float,
) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of `concurrency` threads for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        i = number
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            search(queries[i % len(queries)][None, :], TOP_K)
            latencies[number].append((time.perf_counter() - start) * 1000)
            i += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = [value for per_client in latencies for value in per_client]
    return len(every) / elapsed, every


def p(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        "| faces | mode | requests/s | p50 ms | p99 ms | rows per search (median) |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for size in args.sizes:
        index = FaceIndex(args.dim, "flat", use_gpu=False)
        index.add(np.arange(size, dtype=np.int64), clustered(size, args.dim, rng))
        queries = clustered(1_000, args.dim, rng)
        lock = threading.Lock()

        def locked(rows: np.ndarray, k: int, index=index, lock=lock) -> SearchResult:
            with lock:  # IndexSync serialises searches the same way
                return index.search(rows, k)

        batched = BatchedSearch(locked)
        try:
            direct, joined = locked(queries[:50], TOP_K), batched.search(queries[:50], TOP_K)
            assert np.array_equal(direct.ids, joined.ids), "batched ids differ"
            assert np.allclose(direct.similarities, joined.similarities, atol=1e-6)
            rates: list[float] = []
            for mode, search in (("one by one", locked), ("batched", batched.search)):
                rate, latencies = run_clients(search, queries, args.concurrency, args.seconds)
                rows = statistics.median(batched.batch_sizes) if mode == "batched" else 1
                rates.append(rate)
                print(
                    f"| {size:,} | {mode} | {rate:.1f} | {p(latencies, 0.5):.1f} | "
                    f"{p(latencies, 0.99):.1f} | {rows} |",
                    flush=True,
                )
            ratio = rates[1] / rates[0]
            print(f"| {size:,} | ratio batched / one by one | {ratio:.2f} | | | |")
        finally:
            batched.close()
        del index


if __name__ == "__main__":
    main()
