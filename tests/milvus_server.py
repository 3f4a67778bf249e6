"""A real Milvus-protocol server for tests: milvus-lite's gRPC server in its own process.

`python -m milvus_lite server` (installed by the `dev` extra) speaks Milvus's gRPC API, so the
Milvus backend is tested through pymilvus exactly as it talks to Milvus Standalone.
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
from pathlib import Path

# A cold start imports pyarrow and FAISS: a few seconds on a loaded 2-core machine.
START_TIMEOUT_S = 60.0
MILVUS_LITE = [sys.executable, "-m", "milvus_lite", "server"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MilvusLiteServer:
    """Started on 127.0.0.1 on a free port with its data in `data_dir`; `stop()` ends it.

    Fault tests break it by pid: `kill()` (SIGKILL), `freeze()`/`thaw()` (SIGSTOP/SIGCONT),
    `restart()` (a new process on the same port and data folder), and `start=False` gives an
    address before the server runs (`start()` later)."""

    def __init__(self, data_dir: Path, *, start: bool = True) -> None:
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start the server (again) on its port and data folder, and wait until it answers."""
        where = ["--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*MILVUS_LITE, *where],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, open connections are reset."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=20)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and requests get no answer, as from a hung server."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill it and start a new server on the same port and data folder."""
        self.kill()
        self.start()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _wait_ready(self) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                client = MilvusClient(uri=self.uri, timeout=5)
                client.list_collections()
                client.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"milvus-lite server not ready:\n{self.output()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            self.thaw()  # a frozen server cannot act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
