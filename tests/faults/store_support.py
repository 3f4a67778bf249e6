"""Helpers for the SQLite store's fault tests: the served process, a small tmpfs, a held write
lock, a consistent copy of a live database, and the checks every scenario repeats.

Named `store_support` (not `conftest`) for the reason gallery_support gives; it reuses that
module's `Server` (python -m service on a free 127.0.0.1 port, ended by its process group).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.faults_support import small_tmpfs  # one tmpfs helper for the suite and the bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service" / "gallery"))
from gallery_support import Server, photo_upload, running_server

from service.gallery.store_files import DATABASE_NAME

__all__ = [
    "Server",
    "assert_refused",
    "backup_copy",
    "held_write_lock",
    "photo_upload",
    "readiness",
    "running_server",
    "small_tmpfs",
    "storage_errors",
]

# Linux needs root (CAP_SYS_ADMIN) to mount; CI runs as root.
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# /readyz answers from a check at most a second old (service.api.gallery_calls): a change of
# state shows within this.
READINESS_SETTLE_S = 3.0


def readiness(client: httpx.Client, *, ready: bool) -> tuple[int, str]:
    """/readyz's status and, when not ready, its message, once it says `ready` (or not), or
    its last answer after READINESS_SETTLE_S."""
    deadline = time.monotonic() + READINESS_SETTLE_S
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            answer = (200, "")
        else:
            answer = (response.status_code, response.json()["error"]["message"])
        if (answer[0] == 200) == ready or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def assert_refused(
    response: httpx.Response, status: int, code: str, *, retry_after: bool = True
) -> str:
    """The answer is `status` with the stable `code` (and a Retry-After when asked); returns
    the message."""
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    if retry_after:
        assert int(response.headers["retry-after"]) >= 1, response.headers
    else:
        assert "retry-after" not in response.headers
    return response.json()["error"]["message"]


def storage_errors(client: httpx.Client, kind: str) -> float:
    """faceverify_storage_errors_total{kind=...} on /metrics (0 when absent)."""
    wanted = f'faceverify_storage_errors_total{{kind="{kind}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


def backup_copy(data_dir: Path, target: Path) -> None:
    """A consistent copy of the live database (SQLite's online backup), as an operator's
    backup taken now would be."""
    source = sqlite3.connect(data_dir / DATABASE_NAME)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


@contextlib.contextmanager
def held_write_lock(database: Path) -> Iterator[None]:
    """Another process's writer: a connection holding BEGIN IMMEDIATE until the block ends."""
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def remount(mount_point: Path, mode: str) -> None:
    """Remount a tmpfs from `small_tmpfs` read-only (`ro`) or writable again (`rw`)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True, timeout=10)


def fill_disk(folder: Path) -> Path:
    """Write a file in `folder` until its file system is full; returns the file."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), open(filler, "ab") as out:  # the last few bytes
        while True:
            out.write(b"\0" * 512)
            out.flush()
    return filler


def wait_exit(process: subprocess.Popen, timeout_s: float) -> int:
    """The exit status of a process expected to end by itself."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after {timeout_s} s")
        time.sleep(0.1)
    return process.returncode
