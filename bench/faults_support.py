"""The stack `bench/faults.py` breaks: a `python -m service` from any checkout, the requests a
client makes, the writes it was told succeeded, and the damage done to files and disks.

Kept apart from tests/faults/*_support.py on purpose: those run the code of this repository, while
the campaign must also run an older checkout (`--service-root`), so everything here talks to the
service over HTTP, and what must touch the gallery's files directly (seeding a large gallery,
staging a crash) runs as a small script inside that checkout with its own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def noise_photo(seed: int, size: int = 640) -> bytes:
    """PNG of a smooth random-colour image: the synthetic pack sees one face in it and embeds
    equal seeds equally, different seeds differently."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", cv2.resize(small, (size, size), cv2.INTER_CUBIC))
    assert ok
    return buffer.tobytes()


@dataclass
class Photos:
    """What a scenario uploads for a seed: the noise photos the synthetic pack sees a face in,
    or, for a real pack (which finds no face in noise), the photos of a folder in turn."""

    files: list[Path] = field(default_factory=list)

    def upload(self, seed: int) -> tuple[str, bytes, str]:
        if not self.files:
            return ("p.png", noise_photo(seed), "image/png")
        path = self.files[seed % len(self.files)]
        kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        return (path.name, path.read_bytes(), kind)


class Service:
    """`python -m service` of the checkout `root`, on a free 127.0.0.1 port, in a process group
    of its own (so its workers end with it). Settings are FACEVERIFY_ variables; a checkout
    that does not know one ignores it (its settings are declared with `extra="ignore"`, and
    pydantic-settings reads only the variables of declared fields)."""

    def __init__(
        self, root: Path, pack: Path, data_dir: Path, *, workers: int = 1, **settings: object
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "FACEVERIFY_PACK_DIR": str(pack),
            "FACEVERIFY_DATA_DIR": str(data_dir),
            "FACEVERIFY_HOST": "127.0.0.1",
            "FACEVERIFY_PORT": str(self.port),
            "FACEVERIFY_WORKERS": str(workers),
            "FACEVERIFY_LOG_LEVEL": "warning",
            "FACEVERIFY_ENROL_QUALITY": "off",  # synthetic photos are noise, not faces
        }
        env.update({f"FACEVERIFY_{k.upper()}": str(v) for k, v in settings.items()})
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def status(self, path: str, timeout_s: float = 2.0) -> int:
        """The status of GET `path`, 0 when nothing answers."""
        try:
            return httpx.get(f"{self.url}{path}", timeout=timeout_s).status_code
        except httpx.HTTPError:
            return 0

    def wait_ready(self, timeout_s: float = 60.0) -> float | None:
        """Seconds since the start until /readyz says 200; None if it exited or never did."""
        waited = wait_until(
            lambda: self.status("/readyz") == 200 or self.process.poll() is not None, timeout_s
        )
        if waited is None or self.process.poll() is not None:
            return None
        return time.monotonic() - self.started

    def wait_up(self, timeout_s: float = 60.0) -> bool:
        """True once /healthz answers 200 (the process serves, ready or not)."""
        return wait_until(lambda: self.status("/healthz") == 200, timeout_s) is not None

    def wait_exit(self, timeout_s: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout_s)
        return None

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 20 s; closes the log."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        signal_group(self.process.pid, signal.SIGKILL)  # workers left by a killed master
        if not self.log.closed:
            self.log.close()


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group `pgid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


def signal_group(pgid: int, signum: int) -> None:
    """Signal a group this bench started, only while a process of it runs: a group whose
    processes are all gone may have its number reused by someone else's."""
    if not group_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.2
) -> float | None:
    """Seconds until `predicate()` is true, None after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(step_s)
    return time.monotonic() - started


@dataclass
class Answer:
    """What a client got: a status (0 = no answer), a stable code, Retry-After, seconds."""

    status: int
    code: str | None
    retry_after: str | None
    seconds: float
    body: dict = field(default_factory=dict)
    failure: str | None = None  # why no answer came, other than a timeout

    def describe(self, limit_s: float) -> str:
        if self.status == 0 and self.failure:
            return f"no answer ({self.failure})"
        if self.status == 0:
            return f"no answer in {limit_s:.0f} s"
        text = f"{self.status} {self.code or ''}".strip()
        if self.retry_after is not None:
            text += f" (Retry-After {self.retry_after})"
        return text


def ask(client: httpx.Client, method: str, path: str, timeout_s: float, **kwargs) -> Answer:
    started = time.perf_counter()
    # A connection per request: a server that drops a connection after a 500 must not make
    # the next request on it look unanswered.
    headers = {"Connection": "close", **kwargs.pop("headers", {})}
    try:
        response = client.request(method, path, timeout=timeout_s, headers=headers, **kwargs)
    except httpx.TimeoutException:
        return Answer(0, None, None, time.perf_counter() - started)
    except httpx.HTTPError as error:
        return Answer(0, None, None, time.perf_counter() - started, failure=type(error).__name__)
    seconds = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return Answer(
        response.status_code,
        code,
        response.headers.get("retry-after"),
        seconds,
        body if isinstance(body, dict) else {},
    )


class Acknowledged:
    """Every identity and face the service answered 201 for, to look for afterwards."""

    def __init__(self, photos: Photos) -> None:
        self.photos = photos
        self.faces: dict[str, set[str]] = {}  # identity id -> face ids

    @property
    def count(self) -> int:
        return len(self.faces) + sum(len(f) for f in self.faces.values())

    def identity(self, client: httpx.Client, name: str, timeout_s: float = 20.0) -> str | None:
        answer = ask(client, "POST", "/identities", timeout_s, json={"name": name})
        if answer.status == 201:
            self.faces[answer.body["id"]] = set()
            return answer.body["id"]
        return None

    def enrol(self, client: httpx.Client, identity: str, seed: int, timeout_s: float) -> Answer:
        files = {"image": self.photos.upload(seed)}
        answer = ask(client, "POST", f"/identities/{identity}/faces", timeout_s, files=files)
        if answer.status == 201:
            self.faces.setdefault(identity, set()).add(answer.body["face_id"])
        return answer

    def missing(self, client: httpx.Client) -> int | None:
        """Acknowledged identities and faces the service does not hold; None if it cannot say
        (the gallery does not answer)."""
        missing = 0
        for identity, faces in self.faces.items():
            answer = ask(client, "GET", f"/identities/{identity}", 20.0)
            if answer.status == 404:
                missing += 1 + len(faces)
            elif answer.status == 200:
                held = {face["face_id"] for face in answer.body.get("faces", [])}
                missing += len(faces - held)
            else:
                return None
        return missing


# Run inside the checkout under test (its own `service` package), so that a large gallery and
# a crash between a delete and the index save are staged with the code being measured.
SEED_SCRIPT = """
import sqlite3, sys
import numpy as np
from service.gallery.interface import NewFace
from service.gallery.store import SqliteStore, DATABASE_NAME
data_dir, faces, per_identity = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with sqlite3.connect(f"{data_dir}/{DATABASE_NAME}") as db:
    model_id, dim = db.execute("SELECT model_id, dim FROM faces LIMIT 1").fetchone()
rng = np.random.default_rng(12345)
store = SqliteStore.in_directory(data_dir)
batch = []
for number in range((faces + per_identity - 1) // per_identity):
    identity = store.create_identity(f"filler {number}", {})
    for _ in range(min(per_identity, faces - number * per_identity)):
        vector = rng.standard_normal(dim).astype(np.float32)
        batch.append(
            NewFace(identity.id, model_id, vector / np.linalg.norm(vector), 1.0, 1.0, "0" * 64)
        )
assert store.add_faces(batch) == len(batch)
store.close()
"""

DELETE_SCRIPT = """
import sys
from service.gallery.store import SqliteStore
store = SqliteStore.in_directory(sys.argv[1])
assert store.delete_identity(sys.argv[2]) is not None
store.erase()
store.close()
"""


def run_in_checkout(root: Path, script: str, *args: str, timeout_s: float = 120.0) -> None:
    subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        timeout=timeout_s,
        capture_output=True,
    )


def embedding_of(database: Path, identity: str) -> bytes:
    """The stored embedding (float32 bytes, as FAISS keeps it) of an identity's first face."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as db:
        row = db.execute(
            "SELECT embedding FROM faces WHERE identity_id = ? ORDER BY index_id LIMIT 1",
            (identity,),
        ).fetchone()
    return bytes(row[0])


def files_holding(folder: Path, raw: bytes) -> list[str]:
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and raw in path.read_bytes()
    )


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def small_tmpfs(size: str, parent: Path) -> Iterator[Path]:
    """A tmpfs of `size` on a new folder under `parent` (root only), unmounted afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=parent))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        check=True,
        timeout=10,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)
        mount_point.rmdir()


def fill_disk(folder: Path) -> Path:
    """A file in `folder` grown until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as out:
        while True:
            out.write(b"\0" * 512)
            out.flush()
    return filler


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc, without multiprocessing's resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and (
                b"resource_tracker" not in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(port: int) -> bool:
    """Whether a new server could bind the port as uvicorn does (SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def metric_lines(url: str, prefix: str) -> dict[str, float]:
    """The /metrics samples whose name starts with `prefix`."""
    samples = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
