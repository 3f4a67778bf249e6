"""The Dockerfile's promises, checked without a container engine: configurable base, CPU and
GPU variants of one build and runtime on one CUDA major, non-root runtime, health check,
volumes; and the health probe the image runs, against real HTTP servers."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from deploy_support import DOCKERFILE, HEALTHCHECK_SCRIPT, REPO_ROOT, free_port

# Packages that bring a compiler toolchain; none may be installed in a runtime stage.
COMPILER_PACKAGES = ("build-essential", "gcc", "g++", "clang", "python3-dev", "cuda-nvcc")
PROBE_TIMEOUT_S = 30


@dataclass
class Stage:
    base: str
    name: str
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].lines.append(line)
        elif instruction.upper() == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            global_args[key] = value.strip('"')
    return global_args, stages


def stage_named(name: str) -> Stage:
    return next(stage for stage in parse()[1] if stage.name == name)


def test_base_image_is_a_build_arg_defaulting_to_official_slim_python():
    global_args, _ = parse()
    assert global_args["BASE_IMAGE"] == "python:3.11-slim"
    assert stage_named("python-cpu").base == "${BASE_IMAGE}"
    assert stage_named("python-gpu").base == "${CUDA_BASE_IMAGE}"


def test_cpu_is_the_default_variant_and_both_variants_share_build_and_runtime():
    global_args, stages = parse()
    assert global_args["VARIANT"] == "cpu", "`docker build .` must give the CPU image"
    assert stages[-1].name == "runtime", "the last stage is the default target"
    for name in ("build", "runtime"):
        assert stage_named(name).base == "python-${VARIANT}", name
    # One definition of the runtime: no stage other than `runtime` sets the user or entrypoint.
    for stage in stages:
        if stage.name != "runtime":
            assert not any(line.startswith(("USER", "ENTRYPOINT")) for line in stage.lines)


def test_runtime_stage_runs_as_non_root_with_healthcheck_port_and_volumes():
    stage = stage_named("runtime")
    users = [line.split()[1] for line in stage.lines if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    healthcheck = next(line for line in stage.lines if line.upper().startswith("HEALTHCHECK"))
    assert "/usr/local/bin/faceverify-healthcheck" in healthcheck
    assert "COPY deploy/healthcheck.py /usr/local/bin/faceverify-healthcheck" in stage.lines
    assert 'VOLUME ["/models", "/data"]' in stage.lines
    assert "EXPOSE ${PORT}" in stage.lines
    assert re.search(r"FACEVERIFY_PORT=\$\{PORT\}", stage.text)
    assert "FACEVERIFY_HOST=0.0.0.0" in stage.text
    assert "COPY --from=build /opt/faceverify /opt/faceverify" in stage.lines, (
        "the runtime copies a venv built elsewhere"
    )


@pytest.mark.parametrize("name", ["python-cpu", "python-gpu", "runtime"])
def test_runtime_stages_install_no_compiler(name):
    text = stage_named(name).text
    for package in COMPILER_PACKAGES:
        assert not re.search(rf"install[^&]*\s{re.escape(package)}(\s|$)", text), package


def test_gpu_variant_swaps_in_the_gpu_builds_and_rejects_unknown_variants():
    build = stage_named("build").text
    swap = next(line for line in stage_named("build").lines if "pip uninstall" in line)
    assert swap.startswith('RUN if [ "${VARIANT}" = gpu ]; then')
    assert "pip uninstall -y onnxruntime faiss-cpu" in swap
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" "faiss-gpu==${FAISS_GPU_VERSION}"' in swap
    assert "CUDAExecutionProvider" in swap
    assert 'elif [ "${VARIANT}" != cpu ]' in swap and "exit 1" in swap
    assert "ARG VARIANT" in build.splitlines(), "the stage must see the global VARIANT"


def test_gpu_stage_uses_one_cuda_major_for_onnxruntime_and_faiss():
    global_args, _ = parse()
    build = stage_named("build").text
    cuda_tag = global_args["CUDA_BASE_IMAGE"].rsplit(":", 1)[1]
    assert cuda_tag.startswith("12.") and "cudnn" in cuda_tag
    onnxruntime_gpu = re.search(r"ARG ONNXRUNTIME_GPU_VERSION=(\S+)", build).group(1)
    # onnxruntime-gpu 1.27 and later link libcudart.so.13; 1.26.x is the last CUDA 12 build.
    assert tuple(int(part) for part in onnxruntime_gpu.split(".")[:2]) <= (1, 26)
    wheels = re.search(r'ARG CUDA_RUNTIME_WHEELS="([^"]+)"', build).group(1).split()
    cuda_minor = ".".join(cuda_tag.split(".")[:2])
    for wheel in wheels:
        name, _, version = wheel.partition("==")
        assert name.endswith("-cu12"), wheel
        if name != "nvidia-curand-cu12":  # cuRAND has its own version line (10.x)
            assert version == f"{cuda_minor}.*", f"{wheel} does not match CUDA {cuda_minor}"
    assert "pip uninstall -y onnxruntime faiss-cpu" in build


def test_gpu_versions_agree_with_the_pyproject_gpu_extra():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["gpu"]
    pins = dict(requirement.split("==") for requirement in extra)
    build = stage_named("build").text
    onnxruntime_gpu = re.search(r"ARG ONNXRUNTIME_GPU_VERSION=(\S+)", build).group(1)
    faiss_gpu = re.search(r"ARG FAISS_GPU_VERSION=(\S+)", build).group(1)
    assert re.fullmatch(
        pins["onnxruntime-gpu"].replace(".", r"\.").replace("*", ".*"), onnxruntime_gpu
    )
    assert pins["faiss-gpu"] == faiss_gpu


def test_dockerignore_lets_in_every_file_the_image_copies():
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore, "the build context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = {
        line.split()[1]
        for line in logical_lines(DOCKERFILE.read_text(encoding="utf-8"))
        if line.startswith("COPY ") and "--from=" not in line
    }
    assert sources <= allowed
    for source in sources:
        assert (REPO_ROOT / source).exists(), source


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(status: int) -> Iterator[int]:
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def probe(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)],
        env={"FACEVERIFY_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )


def test_health_probe_passes_when_healthz_answers_200():
    with serving(200) as port:
        assert probe(port).returncode == 0


def test_health_probe_fails_on_an_error_status_and_on_a_closed_port():
    with serving(503) as port:
        result = probe(port)
        assert result.returncode == 1 and "503" in result.stderr
    result = probe(free_port())
    assert result.returncode == 1 and "unhealthy" in result.stderr
