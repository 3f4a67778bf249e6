"""The command line: start-up failures are one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_models import make_manifest_pack


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def test_serve_with_missing_pack_exits_with_one_line(tmp_path):
    result = _run("serve", env={"FACEVERIFY_PACK_DIR": str(tmp_path / "nothing")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "fetch-models" in lines[0] or "FACEVERIFY_PACK_DIR" in lines[0]


def test_serve_with_wrong_checksum_exits_with_one_line(tmp_path):
    pack = make_manifest_pack(tmp_path / "pack")
    recognizer = next(p for p in pack.glob("*.onnx") if "det" not in p.name)
    recognizer.write_bytes(recognizer.read_bytes()[:-1] + b"\0")
    result = _run("serve", env={"FACEVERIFY_PACK_DIR": str(pack)})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "sha256" in result.stderr or "checksum" in result.stderr


def test_check_pack_prints_the_manifest(tmp_path):
    pack = make_manifest_pack(tmp_path / "pack", name="tiny")
    result = _run("check-pack", str(pack))
    assert result.returncode == 0, result.stderr
    assert '"name": "tiny"' in result.stdout


def test_fetch_unknown_pack_fails_with_one_line(tmp_path: Path):
    result = _run("fetch-models", "no_such_pack", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "buffalo_l" in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("insightface", ["installed", "absent"])
def test_serve_starts_uvicorn_and_answers_readyz(tmp_path, insightface):
    """`python -m service` serves; insightface (a dev-only dependency: parity tests and the
    naive benchmark server) is not needed, so a plain `pip install .` gives a working service."""
    import time

    import httpx

    pack = make_manifest_pack(tmp_path / "pack")
    port = _free_port()
    env = {
        **os.environ,
        "FACEVERIFY_PACK_DIR": str(pack),
        "FACEVERIFY_DATA_DIR": str(tmp_path / "data"),
        "FACEVERIFY_PORT": str(port),
    }
    if insightface == "absent":
        shadow = tmp_path / "shadow" / "insightface"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(
            "raise ImportError(\"No module named 'insightface'\")\n"
        )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(shadow.parent), env.get("PYTHONPATH")])
        )
    server = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the probes answer at once; /readyz turns 200 once the pack has loaded
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if response.status_code == 200:
                    break
                assert response.json()["error"]["code"] == "not_ready"
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read().decode()
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.2)
        assert response.json()["model"].startswith("synthetic")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_invalid_settings_exit_with_one_line_naming_each_variable(tmp_path):
    result = _run(
        "serve",
        env={"FACEVERIFY_PORT": "eighty", "FACEVERIFY_WORKERS": "0", "FACEVERIFY_DATA_DIR": "x"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("faceverify: invalid settings:")
    assert "FACEVERIFY_PORT='eighty'" in lines[0] and "FACEVERIFY_WORKERS='0'" in lines[0]


def _serve_and_collect_log(tmp_path: Path, workers: int, log_level: str) -> str:
    """Start `python -m service`, wait until every worker is up (each logs its start at info;
    at warning, one worker answering /readyz), send one request, stop it, return its log."""
    import time

    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FACEVERIFY_PACK_DIR": str(make_manifest_pack(tmp_path / "pack")),
        "FACEVERIFY_DATA_DIR": str(tmp_path / "data"),
        "FACEVERIFY_PORT": str(port),
        "FACEVERIFY_WORKERS": str(workers),
        "FACEVERIFY_LOG_LEVEL": log_level,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / f"serve-{workers}-{log_level}.log"

    def started() -> bool:
        if log_level == "info":
            return log_path.read_text().count("Application startup complete") >= workers
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while not started():
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"not started in 60 s:\n{log_path.read_text()}"
                time.sleep(0.2)
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
    return log_path.read_text()


def test_every_worker_logs_its_model_pack_and_provider(tmp_path):
    """With several uvicorn workers, each one's start-up messages reach the log, with its pid."""
    log = _serve_and_collect_log(tmp_path, workers=2, log_level="info")
    loaded = [line for line in log.splitlines() if "service: model pack synthetic" in line]
    pids = {line.split("[", 1)[1].split("]", 1)[0] for line in loaded}
    assert len(loaded) == 2 and len(pids) == 2, log
    assert all("CPUExecutionProvider" in line for line in loaded)
    assert sum("gallery index built" in line for line in log.splitlines()) == 2, log
    assert '"GET /healthz HTTP/1.1" 200' in log, "access log"


def test_log_level_warning_silences_info_from_the_service_and_uvicorn(tmp_path):
    log = _serve_and_collect_log(tmp_path, workers=1, log_level="warning")
    assert " INFO " not in log, log


def test_keys_create_prints_the_secret_once_and_list_and_revoke_never_do(tmp_path: Path):
    keys = tmp_path / "keys.json"
    created = _run("keys", "--file", str(keys), "create", "--name", "ci", "--scopes", "verify")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fv_") and len(secret) > 40
    assert secret not in keys.read_text()
    listed = _run("keys", "list", env={"FACEVERIFY_API_KEYS_FILE": str(keys)})
    assert listed.returncode == 0 and "ci\tverify" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout
    revoked = _run("keys", "--file", str(keys), "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in _run("keys", "--file", str(keys), "list").stdout
    again = _run("keys", "--file", str(keys), "create", "--name", "x", "--scopes", "root")
    assert again.returncode == 2 and "unknown scope" in again.stderr


def test_serve_with_a_missing_keys_file_exits_with_one_line(tmp_path):
    pack = make_manifest_pack(tmp_path / "pack")
    env = {"FACEVERIFY_PACK_DIR": str(pack), "FACEVERIFY_API_KEYS_FILE": str(tmp_path / "k")}
    result = _run("serve", env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "keys create" in result.stderr


def test_log_handlers_follow_stderr_when_it_is_replaced(capsys):
    """Logging configured while one stream is stderr keeps working after it is closed and
    replaced (an in-process CLI run under a capturing test runner, a redirected host)."""
    import io
    import logging

    from service.logs import configure_logging

    first = io.StringIO()
    real, sys.stderr = sys.stderr, first
    try:
        configure_logging("info")
        first.close()
        second = io.StringIO()
        sys.stderr = second
        logging.getLogger("service.test").info("after the swap")
    finally:
        sys.stderr = real
    assert "after the swap" in second.getvalue()
    assert "Logging error" not in second.getvalue()
