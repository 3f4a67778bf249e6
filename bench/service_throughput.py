"""Throughput of the HTTP service under concurrent clients, for sizing workers and threads.

Each configuration starts `python -m service serve` as a real uvicorn server on a real pack,
waits for /readyz, then sends the same requests (`/verify` on photo pairs, or `/embed` on
single photos) from `concurrency` client threads. It prints requests/s, latency percentiles and
the ratio of requests/s to the first configuration (the baseline), all measured in this run.

    python bench/service_throughput.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface --config 1:1:0 --config 1:4:0 \
        --config 2:4:0 --config 2:4:2

A configuration is WORKERS:CONCURRENCY:THREADS (THREADS = FACEVERIFY_INTRA_OP_THREADS; 0 is the
service's auto: onnxruntime's default with one worker, the CPUs divided among several). The
client threads share the machine with the server, as a sidecar or a proxy on the same host
would.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
START_LIMIT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
# Serial baseline, then concurrent clients on one worker, then on two.
DEFAULT_CONFIGS = ("1:1:0", "1:4:0", "2:4:0")


@dataclass(frozen=True)
class Config:
    workers: int
    concurrency: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> Config:
        workers, concurrency, threads = (int(part) for part in text.split(":"))
        return cls(workers, concurrency, threads)

    def __str__(self) -> str:
        threads = self.threads or "auto"
        return f"workers={self.workers} clients={self.concurrency} threads={threads}"


@dataclass(frozen=True)
class Result:
    config: Config
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(pack: Path, config: Config) -> Iterator[str]:
    """A `python -m service serve` process for `config`; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "FACEVERIFY_PACK_DIR": str(pack.resolve()),
            "FACEVERIFY_DATA_DIR": data_dir,
            "FACEVERIFY_HOST": "127.0.0.1",
            "FACEVERIFY_PORT": str(port),
            "FACEVERIFY_WORKERS": str(config.workers),
            "FACEVERIFY_INTRA_OP_THREADS": str(config.threads),
            "FACEVERIFY_LOG_LEVEL": "warning",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], cwd=data_dir, env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, config.workers)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen, workers: int) -> None:
    """Wait for /readyz. A worker accepts connections only once it has loaded the pack; with
    several workers, wait as long again so that the others (loading in parallel) are up too."""
    start = time.monotonic()
    while time.monotonic() < start + START_LIMIT_S:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                if workers > 1:
                    time.sleep(time.monotonic() - start)
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service was not ready within {START_LIMIT_S} s")


def requests_for(route: str, photos: list[Path], count: int) -> list[dict[str, bytes]]:
    payloads = [photo.read_bytes() for photo in photos]
    if route == "verify":
        return [
            {"image1": payloads[i % len(payloads)], "image2": payloads[(i + 1) % len(payloads)]}
            for i in range(count)
        ]
    return [{"image": payloads[i % len(payloads)]} for i in range(count)]


def run(url: str, route: str, bodies: list[dict[str, bytes]], concurrency: int) -> tuple:
    def send(client: httpx.Client, files: dict[str, bytes]) -> float:
        start = time.perf_counter()
        response = client.post(f"{url}/{route}", files=files)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise SystemExit(f"/{route} answered {response.status_code}: {response.text}")
        return elapsed

    with httpx.Client(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=64)) as client:
        for files in bodies[: 2 * concurrency]:  # warm-up: every worker's sessions and arenas
            send(client, files)
        with ThreadPoolExecutor(concurrency) as pool:
            start = time.perf_counter()
            latencies = list(pool.map(lambda files: send(client, files), bodies))
            seconds = time.perf_counter() - start
    return latencies, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder searched for *.jpg/png")
    parser.add_argument("--route", choices=["verify", "embed"], default="verify")
    parser.add_argument("--requests", type=int, default=60, help="timed requests per config")
    parser.add_argument(
        "--config",
        type=Config.parse,
        action="append",
        help="WORKERS:CONCURRENCY:THREADS, repeatable; the first is the baseline "
        f"(default {' '.join(DEFAULT_CONFIGS)})",
    )
    args = parser.parse_args()
    configs = args.config or [Config.parse(text) for text in DEFAULT_CONFIGS]
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    if not photos:
        raise SystemExit(f"no photos under {args.images}")
    bodies = requests_for(args.route, photos, args.requests)

    results = []
    for config in configs:
        with serving(args.pack, config) as url:
            latencies, seconds = run(url, args.route, bodies, config.concurrency)
        results.append(Result(config, len(bodies), seconds, latencies))
        print(f"done: {config}", file=sys.stderr)

    baseline = results[0].per_second
    print(f"/{args.route}, {len(bodies)} requests per configuration, {os.cpu_count()} cores")
    print(f"{'configuration':<38} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'ratio':>6}")
    for result in results:
        print(
            f"{result.config!s:<38} {result.per_second:>7.2f} {result.percentile(50):>8.1f} "
            f"{result.percentile(95):>8.1f} {result.per_second / baseline:>6.2f}"
        )


if __name__ == "__main__":
    main()
