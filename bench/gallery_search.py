"""Gallery search at 10k-1M faces: exact (numpy matmul, FAISS flat) against approximate indexes.

Embeddings are synthetic but *clustered* like real face embeddings: each identity is a random
unit centre and each of its faces is centre + noise, renormalised (noise 0.8 gives same-person
cosine ~0.6, different people ~0, as ArcFace-family models do). Uniform random vectors would
make every approximate index look broken, because they have no neighbourhoods to find.
Queries are fresh faces of enrolled identities. Approximate indexes are the service's own
(`service.gallery.index.FaceIndex`, same parameters), so the numbers are what it serves.

For each size and method it prints build time, resident memory added by the build, median
single-query latency, the latency of one batch of queries, and recall@1 / recall@10 against
exact search (the share of exact top-k ids the index also returns), plus close@10: the same
recall counted only over exact neighbours with cosine >= 0.3, the ones an identification
answer can depend on; and id@1: how often the top hit is a face of the same identity as the
exact top hit (what a 1:N answer reports).

    python bench/gallery_search.py        # 10k, 100k, 1M; HNSW at 1M takes 10+ min on 2 cores
    python bench/gallery_search.py --sizes 10000 100000 --skip hnsw:1000000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from service.gallery.index import FaceIndex, IndexKind

# numpy: plain matmul + argpartition baseline; faiss-flat: FAISS's own IndexFlatIP search;
# flat / ivf / hnsw: the service's FaceIndex kinds (flat = numpy product over FAISS storage).
METHODS = ("numpy", "faiss-flat", "flat", "ivf", "hnsw")
# Rows generated per step: bounds the float64 temporaries of the random generator.
GENERATION_CHUNK = 100_000


@dataclass
class Row:
    size: int
    method: str
    build_s: float
    memory_mb: float
    single_ms: float
    batch_ms: float
    recall1: float
    recall10: float
    recall_close: float
    identity1: float
    note: str = ""


def resident_mb() -> float:
    """This process's resident memory (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clustered_gallery(
    size: int, dim: int, faces_per_identity: int, noise: float, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries): unit float32 rows; queries are new faces of gallery identities."""
    rng = np.random.default_rng(seed)
    identities = max(1, size // faces_per_identity)
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    scale = np.float32(noise / np.sqrt(dim))  # a float64 scalar would promote to float64

    def faces_of(labels: np.ndarray) -> np.ndarray:
        jitter = rng.standard_normal((len(labels), dim), dtype=np.float32)
        faces = centres[labels] + scale * jitter
        faces /= np.linalg.norm(faces, axis=1, keepdims=True)
        return faces

    gallery = np.empty((size, dim), np.float32)
    for start in range(0, size, GENERATION_CHUNK):
        stop = min(size, start + GENERATION_CHUNK)
        gallery[start:stop] = faces_of(np.arange(start, stop) % identities)
    return gallery, faces_of(rng.integers(0, identities, queries))


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k most similar gallery rows per query, best first (numpy matmul)."""
    scores = queries @ gallery.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def recall_of_close(found: np.ndarray, truth: np.ndarray, close: np.ndarray) -> float:
    """Share of the exact top-k that are close to the query (same identity, in practice)
    which the index also returns. Past a query's own identity the exact top-k are unrelated
    people at cosine ~0 whose order is noise; missing those changes no answer."""
    hits = sum(len(set(f) & set(t[c])) for f, t, c in zip(found, truth, close, strict=True))
    return hits / max(int(close.sum()), 1)


def timed_search(
    search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray, k: int, singles: int
) -> tuple[float, float, np.ndarray]:
    """(median single-query ms, whole-batch ms, ids of the batch)."""
    search(queries[:1], k)  # warm-up
    single = []
    for row in queries[:singles]:
        started = time.perf_counter()
        search(row[None], k)
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    ids = search(queries, k)
    batch_ms = (time.perf_counter() - started) * 1000
    return statistics.median(single), batch_ms, ids


def bench_size(size: int, args: argparse.Namespace, skip: set[tuple[str, int]]) -> list[Row]:
    started = time.perf_counter()
    gallery, queries = clustered_gallery(
        size, args.dim, args.faces_per_identity, args.noise, args.queries, args.seed
    )
    print(f"# {size:,} faces generated in {time.perf_counter() - started:.1f} s", flush=True)
    ids = np.arange(size, dtype=np.int64)
    identity_of = ids % max(1, size // args.faces_per_identity)  # as clustered_gallery labels
    k = args.k
    rows = []
    truth = None
    for method in args.methods:
        if (method, size) in skip:
            rows.append(Row(size, method, *(float("nan"),) * 8, note="skipped"))
            continue
        gc.collect()
        before = resident_mb()
        started = time.perf_counter()
        if method == "numpy":
            index = None

            def search(q: np.ndarray, kk: int) -> np.ndarray:
                return exact_top_k(gallery, q, kk)
        elif method == "faiss-flat":
            index = None
            raw = faiss.IndexFlatIP(args.dim)
            raw.add(gallery)

            def search(q: np.ndarray, kk: int, raw: faiss.Index = raw) -> np.ndarray:
                return raw.search(q, kk)[1]
        else:
            kind: IndexKind = method  # type: ignore[assignment]
            index = FaceIndex.build(args.dim, kind, ids, gallery, use_gpu=args.gpu)

            def search(q: np.ndarray, kk: int, index: FaceIndex = index) -> np.ndarray:
                return index.search(q, kk).ids

        build_s = time.perf_counter() - started
        memory = resident_mb() - before
        single_ms, batch_ms, found = timed_search(search, queries, k, args.singles)
        if truth is None:
            truth = found if method == "numpy" else exact_top_k(gallery, queries, k)
            truth_similarity = np.einsum("qd,qkd->qk", queries, gallery[truth])
            close = truth_similarity >= args.close
        note = f"nprobe={index.nprobe}" if index is not None and index.kind == "ivf" else ""
        if index is not None and index.kind == "hnsw":
            note = "M=32 efSearch=128"
        row = Row(
            size,
            method,
            build_s,
            memory,
            single_ms,
            batch_ms,
            recall(found, truth, 1),
            recall(found, truth, k),
            recall_of_close(found, truth, close),
            float(np.mean(identity_of[found[:, 0]] == identity_of[truth[:, 0]])),
            note,
        )
        rows.append(row)
        print(format_row(row), flush=True)
        del index, search
        raw = None
    return rows


HEADER = (
    f"| {'faces':>9} | {'method':<10} | {'build s':>8} | {'memory MB':>9} | {'1 query ms':>10} | "
    f"{'batch ms':>9} | {'recall@1':>8} | {'recall@10':>9} | {'close@10':>8} | {'id@1':>5} | note |"
)

SEPARATOR = "|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:-1]) + "|"


def format_row(row: Row) -> str:
    return (
        f"| {row.size:>9,} | {row.method:<10} | {row.build_s:>8.2f} | {row.memory_mb:>9.0f} | "
        f"{row.single_ms:>10.2f} | {row.batch_ms:>9.1f} | {row.recall1:>8.3f} | "
        f"{row.recall10:>9.3f} | {row.recall_close:>8.3f} | {row.identity1:>5.3f} | {row.note} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="METHOD:SIZE",
        help="leave out one method at one size, e.g. hnsw:1000000",
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--faces-per-identity", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.8, help="per-face noise (see docstring)")
    parser.add_argument("--queries", type=int, default=100, help="queries in the batch")
    parser.add_argument("--singles", type=int, default=20, help="single queries timed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--close",
        type=float,
        default=0.3,
        help="cosine from which a neighbour counts as close (close@10 column)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="GPU FAISS when available")
    args = parser.parse_args()
    skip = set()
    for item in args.skip:
        method, _, size = item.partition(":")
        skip.add((method, int(size)))

    print(
        f"# {args.dim}-d, {args.faces_per_identity} faces per identity, noise {args.noise}, "
        f"k={args.k}, batch of {args.queries} queries, median of {args.singles} single queries; "
        f"FAISS {faiss.__version__} with {faiss.omp_get_max_threads()} threads, "
        f"GPUs seen: {faiss.get_num_gpus()}"
    )
    print(HEADER)
    print(SEPARATOR)
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args, skip)
    print()
    print(HEADER)
    print(SEPARATOR)
    for row in rows:
        print(format_row(row))


if __name__ == "__main__":
    main()
