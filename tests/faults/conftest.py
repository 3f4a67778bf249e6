"""Fault injection: every test under tests/faults is marked `faults`.

Each scenario starts the processes it breaks (the service, a milvus-lite server), breaks them by
pid (SIGKILL, SIGSTOP), damages only files it created, and ends everything it started. Each one is
bounded in time; `.ci/run` runs them with the rest of the suite (`pytest -m faults` alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)
