"""Readiness across uvicorn worker processes.

With `FACEVERIFY_WORKERS` above 1, uvicorn's workers share one listening socket and each loads
its models in the background, so right after start-up one worker can answer /readyz 200 while
the next connection lands on a worker that still answers 503 `not_ready`. A load balancer
that trusts /readyz would then send traffic that fails. So each worker, once loaded, leaves a
file named after its pid in a folder the workers share, and /readyz answers 200 only when as
many live workers have marked themselves as the server runs; a worker that died (and the
one uvicorn starts in its place, until it has loaded) counts as not ready.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Set by `python -m service` for its workers; internal wiring, not a setting.
READY_DIR_ENV = "FACEVERIFY_WORKER_READY_DIR"


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


@contextlib.contextmanager
def shared_ready_dir(workers: int):
    """Around `uvicorn.run`: a fresh folder for the workers' ready marks (several workers
    only), announced to them in the environment and removed when the server stops."""
    if workers <= 1:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="faceverify-ready-")
    os.environ[READY_DIR_ENV] = directory
    try:
        yield Path(directory)
    finally:
        os.environ.pop(READY_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
