"""faceverify against the naive FastAPI + insightface server (bench/naive_server.py), same pack,
same photos, same async client, one uvicorn worker each, in one run.

    python bench/vs_naive.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface --quick
    python bench/vs_naive.py ... --soak 10        # mixed traffic on faceverify only

For each concurrency (1, 4 and 16 by default) it prints /verify per second, p50 and p99 latency
and the process's peak and last RSS for both servers, then the ratios faceverify / naive.
`--service-root` runs the service from another checkout (to measure a before/after pair).
The soak sends verify, enrol, identify, delete and bad-input requests at concurrency 16 and
prints, each minute, the request rate, the RSS (median, min and max of samples taken twice a
second: one instant would mostly show which uploads happened to be in flight) and the count of
5xx and 503 `overloaded`; at the end, the growth of the median from minute 2 to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
START_LIMIT_S = 180.0
PAIRS = 40  # photo pairs sent round-robin, as in issue 15's measurement


@dataclass
class Level:
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    last_rss_mib: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssWatch:
    """Samples a process's RSS twice a second in a thread; `peak` and `last` in MiB, and the
    samples since the last `reset` or `take`."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.last = pid, 0.0, 0.0
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.last = rss_mib(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, self.last)
            self._samples.append(self.last)

    def reset(self) -> None:
        self.peak = self.last = rss_mib(self.pid)
        self._samples = []

    def take(self) -> list[float]:
        """The samples since the previous call (or reset), and starts a new series."""
        samples, self._samples = self._samples, []
        return samples or [rss_mib(self.pid)]

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def server(command: list[str], env: dict[str, str], cwd: Path, port: int) -> Iterator[int]:
    """Start a server, wait for /readyz, yield its pid; always stopped on exit."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        yield from _serve(process, log, port)


def _serve(process: subprocess.Popen, log, port: int) -> Iterator[int]:
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("server did not become ready")
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def naive_server(pack: Path, port: int):
    env = {**os.environ, "NAIVE_PACK": str(pack), "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--port", str(port)]
    return server([*command, "--log-level", "warning"], env, REPO_ROOT, port)


def faceverify_server(pack: Path, port: int, root: Path, data_dir: Path, extra: dict[str, str]):
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "FACEVERIFY_PACK_DIR": str(pack),
        "FACEVERIFY_PORT": str(port),
        "FACEVERIFY_DATA_DIR": str(data_dir),
        "FACEVERIFY_LOG_LEVEL": "warning",
        **extra,
    }
    return server([sys.executable, "-m", "service", "serve"], env, root, port)


def load_pairs(images: Path) -> list[tuple[bytes, bytes]]:
    photos = {path.name: path for path in images.glob("id*/*.jpg")}
    with (images / "master.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:PAIRS]
    return [
        (photos[Path(r["file_x"]).name].read_bytes(), photos[Path(r["file_y"]).name].read_bytes())
        for r in rows
    ]


async def run_level(
    port: int, pairs: list[tuple[bytes, bytes]], concurrency: int, seconds: float, watch: RssWatch
) -> Level:
    level = Level(concurrency)
    url = f"http://127.0.0.1:{port}/verify"
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:

        async def one(index: int) -> tuple[float, int]:
            first, second = pairs[index % len(pairs)]
            files = {"image1": ("a.jpg", first), "image2": ("b.jpg", second)}
            start = time.perf_counter()
            response = await client.post(url, files=files)
            return (time.perf_counter() - start) * 1000.0, response.status_code

        for index in range(min(4, len(pairs))):  # warm-up
            await one(index)
        watch.reset()
        counter = iter(range(10**9))
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                latency, status = await one(next(counter))
                level.requests += 1
                level.errors += status != 200
                level.latencies_ms.append(latency)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        level.seconds = time.perf_counter() - start
    level.peak_rss_mib, level.last_rss_mib = watch.peak, watch.last
    return level


def measure(pid: int, port: int, pairs, levels: list[int], seconds: float) -> list[Level]:
    watch = RssWatch(pid)
    try:
        return [asyncio.run(run_level(port, pairs, c, seconds, watch)) for c in levels]
    finally:
        watch.stop()


def print_table(naive: list[Level], ours: list[Level]) -> None:
    print(
        "| concurrency | naive verify/s | faceverify verify/s | ratio | p50 naive / faceverify "
        "| p99 naive / faceverify | peak RSS naive / faceverify (MiB) | errors |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for base, level in zip(naive, ours, strict=True):
        print(
            f"| {level.concurrency} | {base.per_second:.1f} | {level.per_second:.1f} | "
            f"{level.per_second / base.per_second:.2f} | "
            f"{base.percentile(50):.0f} / {level.percentile(50):.0f} ms | "
            f"{base.percentile(99):.0f} / {level.percentile(99):.0f} ms | "
            f"{base.peak_rss_mib:.0f} / {level.peak_rss_mib:.0f} | "
            f"{base.errors} / {level.errors} |"
        )


async def soak(port: int, pid: int, images: Path, pairs, minutes: float, concurrency: int) -> None:
    photos = sorted(images.glob("id*/*.jpg"))
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    base = f"http://127.0.0.1:{port}"
    deadline = time.perf_counter() + minutes * 60
    rng = random.Random(0)
    done = 0

    async with httpx.AsyncClient(timeout=120.0) as client:

        async def record(response: httpx.Response) -> httpx.Response:
            nonlocal done
            done += 1
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                codes[response.json().get("error", {}).get("code", "?")] += 1
            return response

        async def mixed() -> None:
            while time.perf_counter() < deadline:
                kind = rng.random()
                if kind < 0.5:
                    first, second = rng.choice(pairs)
                    files = {"image1": ("a.jpg", first), "image2": ("b.jpg", second)}
                    await record(await client.post(f"{base}/verify", files=files))
                elif kind < 0.7:
                    created = await record(
                        await client.post(f"{base}/identities", json={"name": "soak"})
                    )
                    if created.status_code != 201:
                        continue
                    identity = created.json()["id"]
                    photo = rng.choice(photos).read_bytes()
                    await record(
                        await client.post(
                            f"{base}/identities/{identity}/faces", files={"image": ("f.jpg", photo)}
                        )
                    )
                    if rng.random() < 0.5:
                        await record(await client.delete(f"{base}/identities/{identity}"))
                elif kind < 0.9:
                    photo = rng.choice(photos).read_bytes()
                    await record(
                        await client.post(f"{base}/identify", files={"image": ("p.jpg", photo)})
                    )
                else:
                    junk = rng.randbytes(rng.randint(1, 5000))
                    await record(
                        await client.post(f"{base}/embed", files={"image": ("x.jpg", junk)})
                    )

        async def report() -> None:
            last_done = 0
            watch = RssWatch(pid)
            while time.perf_counter() < deadline:
                await asyncio.sleep(min(60.0, max(0.1, deadline - time.perf_counter())))
                rate = (done - last_done) / 60.0
                last_done = done
                fives = sum(n for s, n in statuses.items() if s >= 500)
                samples = watch.take()
                medians.append(statistics.median(samples))
                print(
                    f"minute {len(medians)}: RSS median {medians[-1]:.0f} MiB (min "
                    f"{min(samples):.0f}, max {max(samples):.0f}, now {rss_mib(pid):.0f}), "
                    f"{rate:.1f} req/s, 5xx {fives} ({dict(codes)}), "
                    f"statuses {dict(sorted(statuses.items()))}",
                    flush=True,
                )
            watch.stop()

        medians: list[float] = []
        await asyncio.gather(report(), *(mixed() for _ in range(concurrency)))
    if len(medians) >= 3:
        growth = (medians[-1] / medians[1] - 1.0) * 100.0
        print(
            f"RSS median, minute 2 -> minute {len(medians)}: {medians[1]:.0f} -> "
            f"{medians[-1]:.0f} MiB ({growth:+.1f} %); peak of the medians {max(medians):.0f} MiB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="the deepface folder")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=60.0, help="per level and server")
    parser.add_argument("--quick", action="store_true", help="20 s per level")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes of mixed traffic")
    parser.add_argument("--soak-concurrency", type=int, default=16)
    parser.add_argument("--service-root", type=Path, default=REPO_ROOT)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service")
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    levels = [int(level) for level in args.levels.split(",")]
    args.pack = args.pack.resolve()  # the servers run from other folders (--service-root)
    pairs = load_pairs(args.images)
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as data_dir:
        if args.soak:
            port = free_port()
            with faceverify_server(
                args.pack, port, args.service_root, Path(data_dir), extra
            ) as pid:
                print(f"soak: {args.soak} min at concurrency {args.soak_concurrency}")
                asyncio.run(soak(port, pid, args.images, pairs, args.soak, args.soak_concurrency))
            return 0
        port = free_port()
        with naive_server(args.pack, port) as pid:
            naive = measure(pid, port, pairs, levels, seconds)
        port = free_port()
        with faceverify_server(args.pack, port, args.service_root, Path(data_dir), extra) as pid:
            ours = measure(pid, port, pairs, levels, seconds)
    print(f"{len(pairs)} pairs, {seconds:.0f} s per level, service from {args.service_root}")
    print_table(naive, ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
