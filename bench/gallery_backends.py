"""The two gallery backends side by side: import rate, worker start-up, identify latency.

For each gallery size it builds the same synthetic gallery (clustered unit embeddings, 4 faces
per identity, like real face embeddings: see bench/gallery_search.py) in both backends through
the service's own code paths, then measures:
- import: faces/s through the store's batch writes (`add_faces` / `create_identities`, what
  `python -m service gallery import` and `migrate` use); the embedded one also through
  `import_gallery` on a JSON Lines file when the size is at most --jsonl-max;
- ready: how long an embedded worker takes to open the gallery: building from SQLite (snapshot
  + FAISS build, index kind `auto`; the first start), then from the index the first start saved
  (every later worker and restart; galleries of 50k+ faces); Milvus replicas hold no copy;
- identify: `Gallery.identify` of one query face, top_k 5, p50 / p99 latency and sequential
  throughput, the same queries against both backends, with the top-1 identities compared;
- the Milvus column is a milvus-lite server (started here, on 127.0.0.1) over gRPC: a
  single-process Python engine, not Milvus Standalone, so its figures bound the protocol cost
  and not a cluster's.

Ratios are Milvus / embedded from the same run.

    python bench/gallery_backends.py --sizes 10000 100000
    python bench/gallery_backends.py --sizes 1000000 --no-milvus   # start-up at 1M
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.gallery.gallery import Gallery
from service.gallery.interface import GalleryStore, NewFace
from service.gallery.persisted import index_path
from service.gallery.store import SqliteStore
from service.gallery.transfer import import_gallery

MODEL = "bench@000000000000"
FACES_PER_IDENTITY = 4
# Rows per store call, as the importer writes them.
WRITE_BATCH = 2_000
# A loaded 2-core machine can take minutes to import milvus-lite's engine.
SERVER_START_TIMEOUT_S = 300
# Noise 0.8: same-person cosine ~0.6, different people ~0 (bench/gallery_search.py).
NOISE = 0.8


@dataclass
class Result:
    backend: str
    size: int
    import_per_s: float
    ready_s: float | None
    p50_ms: float
    p99_ms: float
    per_s: float
    top1: list[str]


def gallery_data(size: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(identity centres, face embeddings): face i belongs to identity i // 4."""
    rng = np.random.default_rng(seed)
    identities = size // FACES_PER_IDENTITY
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = np.repeat(centres, FACES_PER_IDENTITY, axis=0)
    faces += NOISE * rng.standard_normal(faces.shape, dtype=np.float32) / np.sqrt(dim)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    return centres, faces


def fill(store: GalleryStore, faces: np.ndarray) -> float:
    """Write the gallery with the importer's batch calls; faces per second."""
    started = time.perf_counter()
    for start in range(0, len(faces), WRITE_BATCH):
        part = range(start, min(start + WRITE_BATCH, len(faces)))
        owners = sorted({i // FACES_PER_IDENTITY for i in part})
        store.create_identities([(f"p{o}", f"person {o}", {}) for o in owners])
        store.add_faces(
            [
                NewFace(f"p{i // FACES_PER_IDENTITY}", MODEL, faces[i], 20.0, 0.9, "", f"f{i}")
                for i in part
            ]
        )
    return len(faces) / (time.perf_counter() - started)


def jsonl_import_rate(directory: Path, faces: np.ndarray) -> float:
    path = directory / "import.jsonl"
    with path.open("w") as out:
        for i, vector in enumerate(faces):
            line = {
                "external_id": f"p{i // FACES_PER_IDENTITY}",
                "name": "x",
                "model": MODEL,
                "embedding": vector.tolist(),
            }
            out.write(json.dumps(line) + "\n")
    store = SqliteStore.in_directory(directory / "jsonl")
    try:
        started = time.perf_counter()
        import_gallery(store, path, model_id=MODEL, dim=faces.shape[1], progress=False)
        return len(faces) / (time.perf_counter() - started)
    finally:
        store.close()
        path.unlink()


def latencies(gallery: Gallery, queries: np.ndarray) -> tuple[float, float, float, list[str]]:
    gallery.identify(queries[:1], top_k=5)  # warm-up
    times, top1 = [], []
    started = time.perf_counter()
    for query in queries:
        began = time.perf_counter()
        [candidates] = gallery.identify(query[None], top_k=5)
        times.append(time.perf_counter() - began)
        top1.append(candidates[0].identity_id if candidates else "")
    total = time.perf_counter() - started
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    return statistics.median(times) * 1e3, p99 * 1e3, len(queries) / total, top1


def embedded(directory: Path, faces: np.ndarray, queries: np.ndarray, jsonl_max: int) -> Result:
    store = SqliteStore.in_directory(directory)
    rate = fill(store, faces)
    store.close()

    def start() -> tuple[Gallery, float]:
        started = time.perf_counter()
        gallery = Gallery(
            SqliteStore.in_directory(directory),
            model_id=MODEL,
            dim=faces.shape[1],
            index_setting="auto",
            use_gpu=False,
            poll_interval_s=None,
            saved_index=index_path(directory, MODEL),
        )
        return gallery, time.perf_counter() - started

    gallery, built = start()  # builds from SQLite (and saves the index when large)
    gallery.close()
    gallery, ready = start()  # a later worker or restart: from the saved index, if any
    print(f"  embedded worker ready: {built:.1f} s building from SQLite, {ready:.1f} s next start")
    kind = gallery.index_state.kind
    try:
        p50, p99, per_s, top1 = latencies(gallery, queries)
    finally:
        gallery.close()
    if len(faces) <= jsonl_max:
        print(f"  embedded JSON Lines import: {jsonl_import_rate(directory, faces):,.0f} faces/s")
    return Result(f"embedded ({kind})", len(faces), rate, ready, p50, p99, per_s, top1)


@contextlib.contextmanager
def milvus_lite(directory: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(directory)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the milvus-lite server did not start") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def milvus(uri: str, size: int, faces: np.ndarray, queries: np.ndarray) -> Result:
    from service.gallery.milvus import MilvusSearch, MilvusStore

    store = MilvusStore(uri, prefix=f"bench{size}")
    rate = fill(store, faces)
    dim = faces.shape[1]
    gallery = Gallery(
        store, model_id=MODEL, dim=dim, search=MilvusSearch(store, model_id=MODEL, dim=dim)
    )
    try:
        p50, p99, per_s, top1 = latencies(gallery, queries)
    finally:
        gallery.close()
    return Result("milvus-lite", size, rate, None, p50, p99, per_s, top1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--jsonl-max", type=int, default=100_000)
    parser.add_argument("--no-milvus", action="store_true")
    args = parser.parse_args()
    # A SIGTERM (e.g. from `timeout`) unwinds like an exception, so the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    root = Path(tempfile.mkdtemp(prefix="gallery-backends-"))
    rows: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            uri = None if args.no_milvus else stack.enter_context(milvus_lite(root / "milvus"))
            for size in args.sizes:
                centres, faces = gallery_data(size, args.dim)
                rng = np.random.default_rng(1)
                owners = rng.integers(0, len(centres), args.queries)
                noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
                queries = centres[owners] + NOISE * noise / np.sqrt(args.dim)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                expected = [f"p{o}" for o in owners]
                print(f"{size:,} faces x {args.dim}-d, {args.queries} queries")
                results = [embedded(root / f"sqlite{size}", faces, queries, args.jsonl_max)]
                if uri is not None:
                    results.append(milvus(uri, size, faces, queries))
                for result in results:
                    right = sum(a == b for a, b in zip(result.top1, expected, strict=True))
                    same = sum(a == b for a, b in zip(result.top1, results[0].top1, strict=True))
                    ready = "-" if result.ready_s is None else f"{result.ready_s:.1f} s"
                    print(
                        f"  {result.backend:<16} import {result.import_per_s:>9,.0f} faces/s"
                        f"  ready {ready:>7}  p50 {result.p50_ms:7.2f} ms"
                        f"  p99 {result.p99_ms:7.2f} ms  {result.per_s:7.1f} q/s"
                        f"  top-1 right {right}/{len(expected)}, same as embedded {same}"
                    )
                if len(results) == 2:
                    base, other = results
                    print(
                        f"  ratio milvus/embedded: p50 {other.p50_ms / base.p50_ms:.1f}x, "
                        f"p99 {other.p99_ms / base.p99_ms:.1f}x, throughput "
                        f"{other.per_s / base.per_s:.2f}x, import "
                        f"{other.import_per_s / base.import_per_s:.2f}x"
                    )
                rows += results
                shutil.rmtree(root / f"sqlite{size}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
