"""Fixtures for the training tests: the shared real assets, skipped when absent."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_assets(assets_dir: Path) -> Path:
    """The shared test assets folder (see `tests/conftest.py`); skips when absent."""
    return assets_dir
