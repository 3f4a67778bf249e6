"""Readiness across uvicorn worker processes.

With `FACEVERIFY_WORKERS` above 1, uvicorn's workers share one listening socket and each loads
its models in the background, so right after start-up one worker can answer /readyz 200 while
the next connection lands on a worker that still answers 503 `not_ready`. A load balancer
that trusts /readyz would then send traffic that fails. So each worker, once loaded, leaves a
file named after its pid in a folder the workers share, and /readyz answers 200 only when as
many live workers have marked themselves as the server runs; a worker that died (and the
one uvicorn starts in its place, until it has loaded) counts as not ready.

Workers also end with their server: if the uvicorn master dies without stopping them (SIGKILL,
the OOM killer), orphaned workers would go on serving and holding the port, so a restarted
server could not bind it. Each worker asks Linux to send it SIGTERM when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), and a watchdog thread compares its parent's pid with the master's
every second (other systems, or a parent that died before the request): either way the worker
shuts down as on a normal SIGTERM (requests in flight finish), and leaves within
`ORPHAN_EXIT_GRACE_S` at the latest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Set by `python -m service` for its workers; internal wiring, not a setting.
READY_DIR_ENV = "FACEVERIFY_WORKER_READY_DIR"
MASTER_PID_ENV = "FACEVERIFY_MASTER_PID"
# <linux/prctl.h>: PR_SET_PDEATHSIG = 1.
PR_SET_PDEATHSIG = 1
# How often the watchdog looks at the parent's pid, and how long an orphan may take to shut
# down cleanly (uvicorn's graceful shutdown) before it exits hard.
PARENT_CHECK_INTERVAL_S = 1.0
ORPHAN_EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerReadiness:
    """The ready marks of a server's `expected` workers in `directory`."""

    directory: Path
    expected: int

    def mark_ready(self) -> None:
        (self.directory / str(os.getpid())).touch()

    def withdraw(self) -> None:
        """This worker is shutting down: it no longer counts as ready."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(os.getpid())).unlink()

    def ready_count(self) -> int:
        """Workers that marked themselves ready and are still running."""
        return sum(
            1 for mark in self.directory.iterdir() if mark.name.isdigit() and _alive(int(mark.name))
        )

    def all_ready(self) -> bool:
        return self.ready_count() >= self.expected


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def worker_readiness_from_env(workers: int) -> WorkerReadiness | None:
    """The shared readiness folder `python -m service` made for its workers, if any."""
    directory = os.environ.get(READY_DIR_ENV)
    if workers <= 1 or not directory:
        return None
    return WorkerReadiness(Path(directory), workers)


def request_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ParentWatch:
    """Shuts this worker down when `master_pid` is no longer its parent (module docstring)."""

    def __init__(self, master_pid: int, interval_s: float = PARENT_CHECK_INTERVAL_S) -> None:
        self.master_pid = master_pid
        self.interval_s = interval_s
        self._thread = threading.Thread(target=self._watch, name="faceverify-parent", daemon=True)

    def start(self) -> None:
        request_parent_death_signal()
        self._thread.start()

    def orphaned(self) -> bool:
        return os.getppid() != self.master_pid

    def _watch(self) -> None:
        while not self.orphaned():
            time.sleep(self.interval_s)
        log.warning(
            "the server process %d is gone; worker %d shuts down", self.master_pid, os.getpid()
        )
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
        time.sleep(ORPHAN_EXIT_GRACE_S)
        os._exit(1)


def watch_parent_from_env() -> ParentWatch | None:
    """In a worker of `python -m service` with several workers: start watching the master."""
    master = os.environ.get(MASTER_PID_ENV, "")
    if not master.isdigit() or int(master) == os.getpid():
        return None
    watch = ParentWatch(int(master))
    watch.start()
    return watch


@contextlib.contextmanager
def shared_ready_dir(workers: int):
    """Around `uvicorn.run`: a fresh folder for the workers' ready marks (several workers
    only), announced to them in the environment with the master's pid, and removed when the
    server stops."""
    if workers <= 1:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="faceverify-ready-")
    os.environ[READY_DIR_ENV] = directory
    os.environ[MASTER_PID_ENV] = str(os.getpid())
    try:
        yield Path(directory)
    finally:
        os.environ.pop(READY_DIR_ENV, None)
        os.environ.pop(MASTER_PID_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
