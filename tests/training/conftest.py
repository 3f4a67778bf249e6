"""Fixtures for the training tests: the shared real assets, skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _assets_root() -> Path:
    configured = os.environ.get("FACEVERIFY_TEST_ASSETS")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """The shared test assets folder (FACEVERIFY_TEST_ASSETS, else ../shared/assets)."""
    root = _assets_root()
    if not root.is_dir():
        pytest.skip(f"shared test assets not found at {root}: set FACEVERIFY_TEST_ASSETS")
    return root
