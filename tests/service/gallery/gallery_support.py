"""Helpers for the gallery tests: clustered embeddings shaped like real face embeddings.

Named `gallery_support` (not `conftest`): test modules import it directly, and a second
`conftest` module would shadow the suite's own one for `from conftest import ...`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np

from service.gallery.gallery import Gallery
from service.gallery.index import IndexSetting
from service.gallery.store import SqliteStore

MODEL = "testmodel@0123456789ab"
OTHER_MODEL = "othermodel@ba9876543210"


def noise_photo(seed: int, size: int = 640) -> bytes:
    """PNG bytes of a smooth random-colour image; the synthetic recognizer embeds different
    seeds differently and equal seeds equally. (Kept here rather than imported from the
    suite's conftest: `from conftest import` resolves to whichever conftest.py pytest loaded
    last.)"""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def clustered(
    identities: int, faces_per_identity: int, dim: int, *, noise: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres, face embeddings, labels): each face is its identity's centre plus noise.

    With noise 0.5 at 64+ dimensions a face is ~0.9 cosine to its centre and ~0.8 to its
    identity's other faces, while different identities sit near 0 (like ArcFace-style
    embeddings: 0.5-0.8 same person, about 0 otherwise).
    """
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((identities, dim)))
    labels = np.repeat(np.arange(identities), faces_per_identity)
    jitter = rng.standard_normal((len(labels), dim)).astype(np.float32) / np.sqrt(dim)
    faces = unit(centres[labels] + noise * jitter)
    return centres, faces, labels


def probe_near(centre: np.ndarray, seed: int, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centre.shape[-1]
    return unit(centre + noise * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim))


def open_test_gallery(
    data_dir: Path,
    *,
    dim: int,
    model_id: str = MODEL,
    index_setting: IndexSetting = "flat",
    approx_min_faces: int = 200_000,
    metrics=None,
) -> Gallery:
    """A gallery without the background poller, so tests control every catch-up."""
    return Gallery(
        SqliteStore.in_directory(data_dir),
        model_id=model_id,
        dim=dim,
        index_setting=index_setting,
        approx_min_faces=approx_min_faces,
        metrics=metrics,
        use_gpu=False,
        poll_interval_s=None,
    )


def milvus_prefix(data_dir: Path) -> str:
    """A Milvus collection prefix of its own for each gallery folder of a test: galleries on
    the session's one Milvus server stay apart, and reopening one folder reopens its gallery."""
    return "t" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]


def backend_settings(backend: str, data_dir: Path, milvus_uri: str | None) -> dict[str, str]:
    """Settings that put a test's gallery in `backend` (the default embedded one, or Milvus)."""
    if backend == "sqlite":
        return {}
    assert milvus_uri is not None
    return {
        "gallery_backend": "milvus",
        "milvus_uri": milvus_uri,
        "milvus_collection_prefix": milvus_prefix(data_dir),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m service` in its own process group, on an ephemeral port."""

    def __init__(self, pack_dir: Path, data_dir: Path, *, workers: int = 1, **settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FACEVERIFY_PACK_DIR": str(pack_dir),
            "FACEVERIFY_DATA_DIR": str(data_dir),
            "FACEVERIFY_PORT": str(self.port),
            "FACEVERIFY_WORKERS": str(workers),
            "FACEVERIFY_LOG_LEVEL": "warning",
            "FACEVERIFY_ENROL_QUALITY": "off",  # synthetic photos are noise, not faces
        }
        env.update({f"FACEVERIFY_{k.upper()}": str(v) for k, v in settings.items()})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # A file, not a pipe: nobody reads while it runs, and a full pipe would block it.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers die with it
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout_s} s")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its workers: no shutdown code runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@contextlib.contextmanager
def running_server(pack_dir: Path, data_dir: Path, **options) -> Iterator[Server]:
    server = Server(pack_dir, data_dir, **options)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def photo_upload(seed: int) -> dict:
    """A multipart `image` of the noise photo of `seed`."""
    return {"image": ("p.png", noise_photo(seed), "image/png")}


def enrol_until_killed(server: Server, minimum: int) -> tuple[str, dict[str, int]]:
    """Create an identity on `server`, enrol photos into it from two clients at once, SIGKILL
    the server once `minimum` enrolments were acknowledged, and return the identity id and
    every acknowledged face (face_id -> photo seed). The server is stopped afterwards."""
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            identity_id = client.post("/identities", json={"name": "Ada"}).json()["id"]

        def enrol(first_seed: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for seed in range(first_seed, first_seed + 10_000, 2):
                    try:
                        response = client.post(
                            f"/identities/{identity_id}/faces", files=photo_upload(seed)
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code == 201:
                        with lock:
                            acknowledged[response.json()["face_id"]] = seed

        writers = [threading.Thread(target=enrol, args=(s,)) for s in (0, 1)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < minimum and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        for writer in writers:
            writer.join(timeout=60)
    finally:
        server.stop()
    return identity_id, acknowledged
