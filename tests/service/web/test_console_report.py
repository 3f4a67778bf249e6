"""The console's gallery report in a real Chromium: a person enrolled under two ids is listed as
a suspected duplicate, the FPIR plot is shown (a blob: image the page's CSP allows), and the page
reaches no other host. Synthetic pack and planted embeddings: no real asset needed."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from browser_support import live_service
from synthetic_models import SyntheticFace, make_manifest_pack

from service.settings import Settings

pytestmark = pytest.mark.slow

DIM = 32


def test_report_section_lists_the_planted_duplicate_and_shows_the_plot(open_page, tmp_path):
    pack = make_manifest_pack(
        tmp_path / "pack",
        [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)],
        embedding_size=DIM,
        threshold=0.5,
    )
    settings = Settings(pack_dir=pack, data_dir=tmp_path / "data", _env_file=None)
    rng = np.random.default_rng(3)
    people = {f"Person {i}": rng.standard_normal(DIM) for i in range(6)}
    people["Person 2 again"] = people["Person 2"] + 0.05 * rng.standard_normal(DIM)
    with live_service(settings) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            model = client.get("/readyz").json()["model"]
            for name, vector in people.items():
                identity = client.post("/identities", json={"name": name}).json()["id"]
                body = {"embedding": vector.tolist(), "model": model}
                assert client.post(f"/identities/{identity}/embeddings", json=body).is_success
        page, network = open_page(url)
        page.goto(f"{url}/console/#gallery")
        page.get_by_role("button", name="Make the report").click()
        table = page.locator("#report-duplicates")
        table.wait_for()
        rows = table.locator("tbody tr")
        assert rows.count() == 1
        text = rows.first.inner_text()
        assert "Person 2" in text and "Person 2 again" in text
        plot = page.locator("img.report-plot")
        plot.wait_for()
        page.wait_for_function("() => document.querySelector('img.report-plot').naturalWidth > 400")
        table.get_by_role("button", name="Person 2 again").click()
        page.locator("#identity-detail", has_text="Person 2 again").wait_for()
        page.screenshot(path=tmp_path / "report.png", full_page=True)
    assert network.blocked == [] and network.failed == []
    assert network.errors == [] and network.console_errors == []
