"""Fixtures of the browser tests: Chromium (skipped when absent), a live service on the real
pack with an empty gallery, and pages that can reach nothing but that service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, NetworkLog, live_service

from service.settings import Settings


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def service_url(real_pack_dir: Path, tmp_path_factory) -> Iterator[str]:
    """One service on the real pack for the whole session (its gallery starts empty)."""
    settings = Settings(
        pack_dir=real_pack_dir, data_dir=tmp_path_factory.mktemp("data"), _env_file=None
    )
    with live_service(settings) as url:
        yield url


@pytest.fixture
def open_page(chromium) -> Iterator[Callable[..., tuple]]:
    """`page, network = open_page(base_url, width=1280)`: a fresh tab in a fresh context."""
    contexts = []

    def make(base_url: str, width: int = 1280, height: int = 900):
        context = chromium.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        network = NetworkLog(base_url)
        network.attach(page)
        return page, network

    yield make
    for context in contexts:
        context.close()
