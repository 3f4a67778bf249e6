"""Slow, vanished and orphaned: clients that send a body one byte a second get 408
`request_timeout` within FACEVERIFY_BODY_TIMEOUT_S instead of holding a connection forever, and
connections whose headers never complete are closed after FACEVERIFY_HEADER_TIMEOUT_S; an
upload the client abandons mid-body is counted as `client_disconnected` (499), not as a bad
request; and when the uvicorn master is SIGKILLed its workers leave and free the port.

Each test runs `python -m service` on a synthetic pack (in its own process group, ended by pid)
and talks to it over raw sockets on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from synthetic_models import SyntheticFace, make_manifest_pack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service" / "gallery"))
from gallery_support import Server, running_server

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.5
# Generous bounds on 2 busy cores: what is asserted is "seconds", not "never".
ANSWER_LIMIT_S = BODY_TIMEOUT_S + 8.0
ORPHAN_EXIT_LIMIT_S = 15.0
MULTIPART = "multipart/form-data; boundary=x"
# The start of a well-formed upload: the rest is the file's bytes, sent slowly or never.
FILE_PART = (
    b'--x\r\nContent-Disposition: form-data; name="image1"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE])


def request_head(port: int, path: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def metric(url: str, line_start: str) -> float:
    """The value of the first /metrics line starting with `line_start`, 0 if none."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/verify", MULTIPART), ("/identities", "application/json")],
    ids=["upload", "json"],
)
def test_a_body_sent_one_byte_a_second_gets_408_within_the_body_timeout(
    pack, tmp_path, path, content_type
):
    with running_server(pack, tmp_path / "data", body_timeout_s=BODY_TIMEOUT_S) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as client:
            client.sendall(request_head(server.port, path, content_type, 50_000))
            client.sendall(FILE_PART if path == "/verify" else b'{"name": "')
            started = time.monotonic()
            answer = b""
            while time.monotonic() - started < ANSWER_LIMIT_S:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    client.sendall(b"a")  # the drip: never an idle gap longer than 0.5 s
                try:
                    chunk = client.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    break  # a drip that crossed the server's close; the answer came before
                if not chunk:
                    break  # the server closed the connection after answering
                answer += chunk
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer
        assert BODY_TIMEOUT_S - 0.5 <= elapsed < ANSWER_LIMIT_S
        assert metric(server.url, 'faceverify_errors_total{code="request_timeout"}') == 1
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def _seconds_until_closed(client: socket.socket, drip: bytes, limit_s: float) -> float:
    """Send `drip` every 0.5 s until the server closes the connection; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            if drip:
                client.sendall(drip)
            if client.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {limit_s} s")


@pytest.mark.parametrize("drip", [b"", b"X"], ids=["silent", "one_byte_at_a_time"])
def test_a_connection_whose_headers_never_complete_is_closed(pack, tmp_path, drip):
    with running_server(pack, tmp_path / "data", header_timeout_s=HEADER_TIMEOUT_S) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            elapsed = _seconds_until_closed(client, drip, ANSWER_LIMIT_S)
        assert HEADER_TIMEOUT_S - 0.5 <= elapsed < ANSWER_LIMIT_S
        # A kept-alive connection gets the same deadline for its next request's headers.
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.3)
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
            client.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert _seconds_until_closed(client, b"X", ANSWER_LIMIT_S) < ANSWER_LIMIT_S
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_the_header_deadline_does_not_cut_a_request_whose_body_is_arriving(pack, tmp_path):
    settings = {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": 2 * HEADER_TIMEOUT_S}
    with (
        running_server(pack, tmp_path / "data", **settings) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as client,
    ):
        client.sendall(request_head(server.port, "/verify", MULTIPART, 50_000) + FILE_PART)
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < ANSWER_LIMIT_S and not answer:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(b"a")
            with contextlib.suppress(TimeoutError):
                answer = client.recv(65536)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]  # the body's deadline, not a close
    assert elapsed >= 2 * HEADER_TIMEOUT_S - 0.5


def test_an_upload_aborted_mid_body_counts_as_client_disconnected(pack, tmp_path):
    with running_server(pack, tmp_path / "data") as server:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                head = request_head(
                    server.port, "/verify", "multipart/form-data; boundary=x", 50_000
                )
                client.sendall(head + FILE_PART + b"a" * 1000)
                time.sleep(0.2)  # the server is inside the body when the client leaves
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if metric(server.url, 'faceverify_errors_total{code="client_disconnected"}') == 3:
                break
            time.sleep(0.2)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'faceverify_errors_total{code="client_disconnected"} 3.0' in text
    assert 'status="499"} 3.0' in text
    assert 'code="validation_error"' not in text


def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The comm field may hold spaces; the parent pid is the 2nd field after its ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _workers(master: int) -> list[int]:
    return [
        pid
        for pid in _children(master)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_master_ends_its_workers_and_frees_the_port(pack, tmp_path):
    server = Server(pack, tmp_path / "data", workers=2)
    try:
        server.wait_ready()
        workers = _workers(server.process.pid)
        assert len(workers) == 2, workers
        os.kill(server.process.pid, signal.SIGKILL)  # the master only: no shutdown code runs
        server.process.wait(timeout=10)
        deadline = time.monotonic() + ORPHAN_EXIT_LIMIT_S
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "orphaned workers still run"
        # A restarted server binds the port as uvicorn does (SO_REUSEADDR).
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", server.port))
            sock.listen()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)  # anything of ours still running
        server.log.close()


def test_a_worker_whose_parent_is_not_the_master_shuts_itself_down(tmp_path):
    """The watchdog alone (as where PR_SET_PDEATHSIG is missing): a process told that its master
    is another pid than its parent's sends itself SIGTERM within a second or so."""
    script = (
        "import time\n"
        "from service.workers import ParentWatch\n"
        "watch = ParentWatch(master_pid=1, interval_s=0.1)\n"
        "watch._thread.start()\n"  # the thread only, without the death signal
        "time.sleep(30)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    try:
        assert process.wait(timeout=15) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
