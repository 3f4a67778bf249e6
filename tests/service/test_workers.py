"""Ready marks shared by a server's worker processes (`service.workers`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.workers import (
    READY_DIR_ENV,
    WorkerReadiness,
    shared_ready_dir,
    worker_readiness_from_env,
)


def _finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_live_workers_that_marked_themselves_count(tmp_path: Path) -> None:
    readiness = WorkerReadiness(tmp_path, expected=2)
    assert readiness.ready_count() == 0 and not readiness.all_ready()
    readiness.mark_ready()
    (tmp_path / str(_finished_pid())).touch()  # a worker that died after loading
    (tmp_path / "notes.txt").touch()
    assert readiness.ready_count() == 1 and not readiness.all_ready()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / str(other.pid)).touch()
            assert readiness.ready_count() == 2 and readiness.all_ready()
        finally:
            other.kill()
    readiness.withdraw()
    readiness.withdraw()  # twice is harmless
    assert not (tmp_path / str(os.getpid())).exists()
    assert readiness.ready_count() == 0


def test_serve_shares_a_fresh_folder_with_several_workers_and_removes_it(monkeypatch) -> None:
    monkeypatch.delenv(READY_DIR_ENV, raising=False)
    with shared_ready_dir(1) as none:
        assert none is None and worker_readiness_from_env(1) is None
    with shared_ready_dir(3) as directory:
        assert directory is not None and directory.is_dir()
        assert os.environ[READY_DIR_ENV] == str(directory)
        readiness = worker_readiness_from_env(3)
        assert readiness == WorkerReadiness(directory, 3)
        readiness.mark_ready()
    assert not directory.exists() and READY_DIR_ENV not in os.environ
    assert worker_readiness_from_env(3) is None
