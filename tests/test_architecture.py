"""The floors of docs/architecture.md: imports inside `service` only run downwards, nothing below
the HTTP edge imports a web framework, and the service never imports the training package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
PLUMBING = "plumbing"  # the modules at the top of service/ (errors, settings, metrics, ...)
# What each room may import from the others (plumbing is open to all).
ALLOWED = {
    PLUMBING: set(),
    "packs": set(),
    "faces": {"packs"},
    "gallery": {"faces", "packs"},
    "packtools": {"faces", "packs"},
    "api": {"faces", "gallery", "packs"},
    "web": {"api"},
    "cli": {"api", "faces", "gallery", "packs", "packtools"},
}
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")
# Plumbing of the server process itself: its access log and its worker processes are uvicorn's.
SERVER_PLUMBING = {"logs.py", "workers.py"}


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (SERVICE / parts[1]).is_dir()):
        return parts[1]
    return PLUMBING


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


MODULES = sorted(
    path
    for path in SERVICE.rglob("*.py")
    if path.name not in {"app.py", "__main__.py"} or path.parent != SERVICE
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVICE)))
def test_imports_run_down_the_floors(path: Path) -> None:
    module = ".".join(("service", *path.relative_to(SERVICE).with_suffix("").parts))
    room = _room(module)
    for imported in _imports(path):
        assert not imported.startswith("training"), f"{module} imports {imported}"
        if not imported.startswith("service.") or _room(imported) in (room, PLUMBING):
            continue
        assert _room(imported) in ALLOWED[room], f"{module} ({room}) imports {imported}"
    if room in ("faces", "gallery", "packs", PLUMBING) and path.name not in SERVER_PLUMBING:
        frameworks = [m for m in _imports(path) if m.split(".")[0] in WEB_FRAMEWORKS]
        assert not frameworks, f"{module} imports {frameworks}"
