"""The console shows the liveness verdict beside each compared face, in a real Chromium, on
tiny synthetic models (a bright photo reads as live, a dark one as an attack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser_support import live_service
from synthetic_liveness import add_liveness_models
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode

from service.settings import Settings

pytestmark = [pytest.mark.slow]

TIMEOUT_MS = 30_000
FACE = SyntheticFace.from_box((200.0, 200.0, 400.0, 440.0), score=0.9)


@pytest.fixture
def liveness_service(tmp_path: Path):
    pack = add_liveness_models(make_manifest_pack(tmp_path / "pack", [FACE]))
    settings = Settings(pack_dir=pack, data_dir=tmp_path / "data", _env_file=None)
    with live_service(settings) as url:
        yield url


def _photo(tmp_path: Path, name: str, level: int) -> Path:
    path = tmp_path / name
    path.write_bytes(encode(np.full((640, 640, 3), level, np.uint8)))
    return path


def test_verify_with_the_liveness_box_ticked_shows_a_verdict_per_face(
    liveness_service, open_page, tmp_path
):
    page, network = open_page(liveness_service)
    page.goto(f"{liveness_service}/console/")
    page.check("#verify-liveness")
    page.set_input_files("#verify-file-1", _photo(tmp_path, "bright.png", 220))
    page.set_input_files("#verify-file-2", _photo(tmp_path, "dark.png", 40))
    first = page.locator("#verify-info-1 [data-testid=liveness]")
    second = page.locator("#verify-info-2 [data-testid=liveness]")
    first.wait_for(timeout=TIMEOUT_MS)
    second.wait_for(timeout=TIMEOUT_MS)
    assert first.inner_text() == "live · 1.000"
    assert first.get_attribute("class") == "liveness live"
    assert second.inner_text() == "possible attack · 0.000"
    assert "at least 0.5" in second.get_attribute("title")
    assert network.blocked == [] and network.failed == []


def test_liveness_error_codes_have_words(liveness_service, open_page):
    page, _ = open_page(liveness_service)
    page.goto(f"{liveness_service}/console/")
    words = page.evaluate(
        """async () => {
        const { describeError } = await import("./js/messages.js");
        const { ApiError } = await import("./js/api.js");
        return [describeError(new ApiError(422, "liveness_failed", "x")).words,
                describeError(new ApiError(409, "liveness_unavailable", "y")).words];
      }"""
    )
    assert "not a live person" in words[0]
    assert "no liveness models" in words[1]
