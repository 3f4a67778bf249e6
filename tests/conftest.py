"""Fixtures shared by the whole suite: where the real assets are, synthetic packs, app clients.

The real model pack and photos live outside the repository (`../shared/assets`, or
FACEVERIFY_TEST_ASSETS); tests that need them skip with the reason when they are absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import app as app_module
from service.app import create_app
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_PACK = "models/scrfd500m_mbf128"


def assets_root() -> Path:
    return Path(os.environ.get("FACEVERIFY_TEST_ASSETS", REPO_ROOT.parent / "shared" / "assets"))


# Starlette's TestClient sends `Host: testserver`; the service answers only the names in
# FACEVERIFY_ALLOWED_HOSTS. Set when this file is imported, before any test module builds an
# app; tests of the allow-list itself set or remove the variable.
TEST_ALLOWED_HOSTS = "localhost,127.0.0.1,::1,testserver"
os.environ["FACEVERIFY_ALLOWED_HOSTS"] = TEST_ALLOWED_HOSTS


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    root = assets_root()
    if not (root / "MANIFEST.md").is_file():
        pytest.skip(f"real test assets not found at {root} (set FACEVERIFY_TEST_ASSETS)")
    return root


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One milvus-lite server for the whole session (tests isolate by collection prefix)."""
    pytest.importorskip("pymilvus", reason="the Milvus tests need the dev extra (pymilvus)")
    pytest.importorskip("milvus_lite", reason="the Milvus tests need the dev extra (milvus-lite)")
    from milvus_server import MilvusLiteServer

    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus"))
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_pack_dir(assets_dir: Path) -> Path:
    pack = assets_dir / REAL_PACK
    if not pack.is_dir():
        pytest.skip(f"real model pack not found at {pack}")
    return pack


@pytest.fixture
def app_client(tmp_path: Path) -> Callable[..., Iterator[TestClient]]:
    """`with app_client(pack_dir, **settings) as client:` runs the app with its lifespan."""

    @contextmanager
    def make(pack_dir: Path, **overrides) -> Iterator[TestClient]:
        overrides.setdefault("data_dir", tmp_path / "data")
        # Synthetic photos are smooth noise, not faces: their crops grade `low` (blurry), and
        # the default enrolment policy would refuse them. Quality tests set it themselves.
        overrides.setdefault("enrol_quality", "off")
        settings = Settings(pack_dir=pack_dir, _env_file=None, **overrides)
        with TestClient(create_app(settings)) as client:
            yield client

    return make


@pytest.fixture
def opened_runtimes(monkeypatch: pytest.MonkeyPatch) -> list:
    """The `RuntimeOptions` of every pipeline the app opens while the test runs, in order."""
    seen: list = []
    from_pack = app_module.FacePipeline.from_pack

    def spy(pack, options, runtime, *args, **kwargs):
        seen.append(runtime)
        return from_pack(pack, options, runtime, *args, **kwargs)

    monkeypatch.setattr(app_module.FacePipeline, "from_pack", spy)
    return seen
