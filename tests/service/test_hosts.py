"""DNS rebinding: the service answers only the `Host` names it is reached by (400
`host_not_allowed` otherwise), localhost by default; the probes answer any `Host`."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_models import make_manifest_pack

from service.api.hosts import HostAllowList
from service.settings import Settings

REBOUND = {"Host": "rebind.attacker.example"}


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack")


def test_a_rebound_host_gets_no_gallery_data(app_client, pack):
    with app_client(pack) as client:
        client.post("/identities", json={"name": "Employee 1001"})
        for method, path in [("GET", "/identities"), ("GET", "/status"), ("GET", "/metrics")]:
            response = client.request(method, path, headers=REBOUND)
            assert response.status_code == 400, path
            assert response.json()["error"]["code"] == "host_not_allowed"
            assert "Employee" not in response.text
        assert client.delete("/identities/x", headers=REBOUND).status_code == 400


def test_probes_answer_any_host(app_client, pack):
    with app_client(pack) as client:
        assert client.get("/healthz", headers=REBOUND).status_code == 200
        assert client.get("/readyz", headers={"Host": "10.2.3.4:8000"}).status_code == 200


def test_default_allow_list_is_localhost_and_the_bind_address(monkeypatch):
    monkeypatch.delenv("FACEVERIFY_ALLOWED_HOSTS", raising=False)
    local = HostAllowList.from_settings(Settings(_env_file=None))
    for host in ("localhost:8000", "LOCALHOST", "127.0.0.1:8000", "[::1]:8000", "localhost."):
        assert local.allows(host), host
    for host in ("rebind.attacker.example", "10.0.0.5:8000", "", None, "localhost:x"):
        assert not local.allows(host), host
    bound = HostAllowList.from_settings(Settings(_env_file=None, host="10.0.0.5"))
    assert bound.allows("10.0.0.5:8000") and bound.allows("localhost:8000")
    everywhere = HostAllowList.from_settings(Settings(_env_file=None, host="0.0.0.0"))
    assert not everywhere.allows("0.0.0.0:8000") and everywhere.allows("localhost")


def test_a_configured_allow_list_replaces_the_default_and_may_pin_ports():
    allowed = HostAllowList.parse("faceverify, face.example.com:443, [fd00::1]")
    assert allowed.allows("faceverify:8000") and allowed.allows("FACEVERIFY")
    assert allowed.allows("face.example.com:443") and not allowed.allows("face.example.com:8000")
    assert allowed.allows("[fd00::1]:8000")
    assert not allowed.allows("localhost:8000")
    assert HostAllowList.parse("*").allows("anything.example:1")
    with pytest.raises(ValueError, match="FACEVERIFY_ALLOWED_HOSTS"):
        HostAllowList.parse("a:b:c:")


def test_the_allow_list_setting_is_applied(app_client, pack):
    with app_client(pack, allowed_hosts="faceverify") as client:
        assert client.get("/identities", headers={"Host": "faceverify:8000"}).status_code == 200
        assert client.get("/identities").status_code == 400  # testserver is not listed now


def test_a_malformed_allow_list_stops_the_server_before_it_starts(
    pack, monkeypatch, capsys, tmp_path
):
    from service.cli import main

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FACEVERIFY_PACK_DIR", str(pack))
    monkeypatch.setenv("FACEVERIFY_ALLOWED_HOSTS", "face.example.com:http")
    assert main(["serve"]) == 2
    assert "FACEVERIFY_ALLOWED_HOSTS" in capsys.readouterr().err
