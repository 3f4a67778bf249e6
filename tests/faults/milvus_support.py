"""Helpers of the Milvus fault tests: a milvus-lite server and a `python -m service` on it, and
timed requests.

Named `milvus_support` (not `conftest`) so that test modules import it directly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# The service process and photo helpers of the gallery tests (tests/service/gallery), which
# pytest only puts on the path when it collects a test of that folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service" / "gallery"))

from gallery_support import Server, backend_settings, milvus_prefix, noise_photo
from milvus_server import MilvusLiteServer

__all__ = ["MilvusLiteServer", "Server", "backend_settings", "milvus_prefix", "noise_photo"]

# Short bounds keep each scenario to seconds: each Milvus request and each gallery call of a
# request waits at most this long, and a few gallery calls run at once.
GALLERY_TIMEOUT_S = 1.5
GALLERY_CONCURRENCY = 2
# What an answer may take beyond the timeout on a loaded 2-core machine (HTTP, thread hand-off).
MARGIN_S = 2.0
# A probe must answer at once, whatever the gallery does.
PROBE_LIMIT_S = 0.5


@dataclass
class Timed:
    response: httpx.Response
    seconds: float

    @property
    def code(self) -> str | None:
        try:
            return self.response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> Timed:
    started = time.perf_counter()
    response = client.request(method, path, **kwargs)
    return Timed(response, time.perf_counter() - started)


def photo(seed: int) -> dict:
    return {"image": ("p.png", noise_photo(seed), "image/png")}


def two_photos() -> dict:
    return {
        "image1": ("a.png", noise_photo(1), "image/png"),
        "image2": ("b.png", noise_photo(2), "image/png"),
    }


def wait_for(predicate, timeout_s: float, step_s: float = 0.2) -> float:
    """Seconds until `predicate()` is true; fails after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not true within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - started


def status_of(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path, timeout=5).status_code
    except httpx.TransportError:
        return 0


@contextmanager
def service_on(
    pack: Path, data_dir: Path, milvus: MilvusLiteServer, **settings
) -> Iterator[Server]:
    """`python -m service` with its gallery in `milvus`, short gallery bounds; ready when
    Milvus runs (it is not waited for otherwise)."""
    options = {
        **backend_settings("milvus", data_dir, milvus.uri),
        "gallery_timeout_s": GALLERY_TIMEOUT_S,
        "gallery_busy_timeout_s": GALLERY_TIMEOUT_S / 3,
        "gallery_concurrency": GALLERY_CONCURRENCY,
        **settings,
    }
    server = Server(pack, data_dir, **options)
    try:
        running = milvus.process is not None and milvus.process.poll() is None
        if running:
            server.wait_ready()
        else:
            wait_for(lambda: status_of(httpx.Client(base_url=server.url), "/healthz") == 200, 60)
        yield server
    finally:
        server.stop()
