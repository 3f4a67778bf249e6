"""docker-compose.yml and its override files: valid against the Compose Specification schema,
and consistent with the Dockerfile, the Prometheus config and the files they mount."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    COMPOSE_FILE,
    DOCKERFILE,
    GPU_COMPOSE_FILE,
    LOCAL_COMPOSE_FILE,
    MILVUS_COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
)

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose files")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed to validate them")

# The service listens on this port inside its container (Dockerfile `ARG PORT`).
CONTAINER_PORT = 8000
COMPOSE_FILES = (COMPOSE_FILE, GPU_COMPOSE_FILE, LOCAL_COMPOSE_FILE, MILVUS_COMPOSE_FILE)
# ${NAME}, ${NAME:-default}, ${NAME-default}; compose-spec "interpolation".
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as shipped by check-jsonschema (no network)."""
    try:
        package = resources.files("check_jsonschema")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema is not installed; it ships the Compose Specification schema")
    schema_file = package / "builtin_schemas" / "vendor" / "compose-spec.json"
    if not schema_file.is_file():
        pytest.skip(f"this check-jsonschema has no vendored compose-spec.json ({schema_file})")
    return json.loads(schema_file.read_text(encoding="utf-8"))


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def interpolate(value: Any) -> Any:
    """The file as compose sees it with no variables set: every ${X:-default} -> default."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


def schema_errors(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def dockerfile_stages() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_specification(compose_schema, path):
    document = load(path)
    assert schema_errors(compose_schema, document) == []
    assert schema_errors(compose_schema, interpolate(document)) == []


def test_schema_check_rejects_a_malformed_service(compose_schema):
    broken = load(COMPOSE_FILE)
    broken["services"]["faceverify"]["restart_policy"] = "always"  # not a compose key
    broken["services"]["faceverify"]["ports"] = {"8000": 8000}  # must be a list
    errors = schema_errors(compose_schema, broken)
    assert any("restart_policy" in error for error in errors)
    assert any(error.startswith("services/faceverify/ports") for error in errors)


def test_faceverify_service_builds_the_cpu_image_with_health_restart_and_volumes():
    service = interpolate(load(COMPOSE_FILE))["services"]["faceverify"]
    assert service["build"]["target"] in dockerfile_stages()
    assert service["build"]["args"]["VARIANT"] == "cpu"
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    assert any(port.endswith(f":{CONTAINER_PORT}") for port in service["ports"])
    test = service["healthcheck"]["test"]
    assert "/usr/local/bin/faceverify-healthcheck" in test
    assert "COPY deploy/healthcheck.py /usr/local/bin/faceverify-healthcheck" in (
        DOCKERFILE.read_text(encoding="utf-8")
    )
    targets = {volume.split(":")[1]: volume.split(":")[2:] for volume in service["volumes"]}
    assert targets["/models"] == ["ro"], "the service must not be able to change its models"
    assert "/data" in targets
    assert service["environment"]["FACEVERIFY_DATA_DIR"] == "/data"
    assert service["environment"]["FACEVERIFY_PACK_DIR"].startswith("/models/")


def test_every_relative_host_path_mounted_exists():
    for path in COMPOSE_FILES:
        for name, service in interpolate(load(path))["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (REPO_ROOT / source).exists(), f"{path.name}: {name} mounts {source}"


def test_prometheus_scrapes_the_faceverify_service_on_its_container_port():
    compose = load(COMPOSE_FILE)
    assert "faceverify" in compose["services"] and "prometheus" in compose["services"]
    config = load(PROMETHEUS_CONFIG)
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "faceverify")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"faceverify:{CONTAINER_PORT}"]


def test_the_service_answers_the_host_name_prometheus_scrapes_and_localhost():
    from service.api.hosts import HostAllowList

    environment = load(COMPOSE_FILE)["services"]["faceverify"]["environment"]
    value = environment["FACEVERIFY_ALLOWED_HOSTS"]
    allowed = HostAllowList.parse(_VARIABLE.sub(lambda match: match.group(2) or "", value))
    config = load(PROMETHEUS_CONFIG)
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "faceverify")
    for group in job["static_configs"]:
        for target in group["targets"]:
            assert allowed.allows(target), target
    published = f"localhost:{CONTAINER_PORT}"
    assert allowed.allows(published) and allowed.allows(f"127.0.0.1:{CONTAINER_PORT}")
    assert not allowed.allows("rebind.attacker.example")


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_override_builds_the_gpu_variant_and_reserves_an_nvidia_gpu():
    service = load(GPU_COMPOSE_FILE)["services"]["faceverify"]
    assert service["build"]["args"]["VARIANT"] == "gpu"
    assert service["build"]["target"] in dockerfile_stages()
    assert "python-gpu" in dockerfile_stages()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_local_override_only_swaps_images_and_parks_grafana():
    base = load(COMPOSE_FILE)["services"]
    local = load(LOCAL_COMPOSE_FILE)["services"]
    assert set(local) <= set(base)
    assert all(
        service.get("image", "localhost/").startswith("localhost/") for service in local.values()
    )
    assert local["grafana"] == {"profiles": ["grafana"]}
    containerfile = REPO_ROOT / local["prometheus"]["build"]["context"] / "Containerfile"
    assert containerfile.is_file()


def test_milvus_override_points_the_service_at_a_healthy_milvus_with_pinned_images():
    override = interpolate(load(MILVUS_COMPOSE_FILE))
    services = override["services"]
    environment = services["faceverify"]["environment"]
    assert environment["FACEVERIFY_GALLERY_BACKEND"] == "milvus"
    host, port = environment["FACEVERIFY_MILVUS_URI"].removeprefix("http://").split(":")
    assert host in services and port == "19530"
    assert services["faceverify"]["depends_on"][host]["condition"] == "service_healthy"
    assert set(services[host]["depends_on"]) == {"etcd", "minio"}
    for name in ("milvus", "etcd", "minio"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image not pinned"
        assert "healthcheck" in services[name]
