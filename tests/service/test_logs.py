"""Logging: the access log never holds a secret a client put in the URL's query string."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from synthetic_models import make_manifest_pack

from service.logs import redact_query

sys.path.insert(0, str(Path(__file__).resolve().parent / "gallery"))
from gallery_support import running_server

SECRET = "sk-live-0123456789abcdefSECRET"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        (f"/identities?api_key={SECRET}", "/identities?api_key=[redacted]"),
        (f"/x?limit=5&token={SECRET}&q=a", "/x?limit=5&token=[redacted]&q=a"),
        (
            f"/x?Access-Token={SECRET}&password={SECRET}",
            "/x?Access-Token=[redacted]&password=[redacted]",
        ),
        (
            f"/x?client_secret={SECRET}&x%2Dapi%2Dkey={SECRET}",
            "/x?client_secret=[redacted]&x%2Dapi%2Dkey=[redacted]",
        ),
        ("/identities?limit=10&monkey=1&keyword=a", "/identities?limit=10&monkey=1&keyword=a"),
        ("/healthz", "/healthz"),
        ("/x?key", "/x?key"),
    ],
)
def test_secret_looking_query_values_are_redacted_and_nothing_else(path, logged):
    assert redact_query(path) == logged


@pytest.mark.slow
def test_a_key_sent_in_the_query_string_never_reaches_the_access_log(tmp_path):
    pack = make_manifest_pack(tmp_path / "pack")
    with running_server(pack, tmp_path / "data", log_level="info", api_keys="k" * 32) as server:
        response = httpx.get(f"{server.url}/identities?api_key={SECRET}", timeout=10)
        assert response.status_code == 401  # keys are taken from headers only
        httpx.get(f"{server.url}/healthz", timeout=10)  # a later line: the first one is written
        output = server.output()
    assert "/identities?api_key=[redacted]" in output
    assert SECRET not in output
