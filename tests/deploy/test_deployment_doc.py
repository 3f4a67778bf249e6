"""docs/deployment.md documents every variable the deployment reads: each service setting,
each compose substitution variable and each Dockerfile build argument."""

from __future__ import annotations

import re

from deploy_support import (
    COMPOSE_FILE,
    DOCKERFILE,
    GPU_COMPOSE_FILE,
    MILVUS_COMPOSE_FILE,
    REPO_ROOT,
)

from service.settings import Settings

DOC = REPO_ROOT / "docs" / "deployment.md"


def documented_names() -> set[str]:
    """Names in the first column of the document's tables."""
    names = set()
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", line)
        if match:
            names.add(match.group(1))
    return names


def test_every_service_setting_is_documented():
    settings = {f"FACEVERIFY_{name.upper()}" for name in Settings.model_fields}
    missing = settings - documented_names()
    assert not missing, f"add to docs/deployment.md: {sorted(missing)}"


def test_every_compose_variable_is_documented():
    variables = set()
    for path in (COMPOSE_FILE, GPU_COMPOSE_FILE, MILVUS_COMPOSE_FILE):
        variables |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text(encoding="utf-8")))
    missing = variables - documented_names()
    assert not missing, f"add to docs/deployment.md: {sorted(missing)}"


def test_every_build_argument_is_documented():
    arguments = set(re.findall(r"^ARG ([A-Z][A-Z0-9_]*)", DOCKERFILE.read_text(), re.MULTILINE))
    missing = arguments - documented_names()
    assert not missing, f"add to docs/deployment.md: {sorted(missing)}"
