"""/docs works on a machine without internet: in a real Chromium that can reach nothing but the
service, Swagger UI renders every operation and "Try it out" gets answers."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def test_docs_render_and_try_it_out_works_with_every_other_host_blocked(
    service_url, open_page, tmp_path
):
    """Opened as /redoc, which sends people to /docs (ReDoc's bundle needs its vendor's CDN)."""
    page, network = open_page(service_url)
    page.goto(f"{service_url}/redoc")
    assert page.url == f"{service_url}/docs"
    for path in ("/verify", "/identify", "/identities", "/healthz"):
        page.locator(f'.opblock-summary-path[data-path="{path}"]').first.wait_for(timeout=20_000)

    healthz = page.locator("#operations-operations-healthz_healthz_get")
    healthz.locator(".opblock-summary-control").click()
    healthz.get_by_role("button", name="Try it out").click()
    healthz.get_by_role("button", name="Execute").click()
    status = healthz.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=10_000)
    assert status.inner_text().strip() == "200"
    assert '"status": "ok"' in healthz.locator(".live-responses-table").inner_text()
    page.screenshot(path=tmp_path / "docs.png")

    assert network.blocked == [], "the docs page asked for other hosts"
    assert network.failed == []
    assert network.errors == []
