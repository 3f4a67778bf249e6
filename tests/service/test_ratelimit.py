"""Rate limits: a token bucket per key (per client address without keys); a burst beyond it
gets 429 `rate_limited` with Retry-After; probes are never limited; the buckets are bounded
with O(1) eviction; a client cannot pick its address with `X-Forwarded-For`."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import httpx
import pytest
from synthetic_models import make_manifest_pack

from service.api import ratelimit
from service.api.ratelimit import TokenBuckets
from service.cli.serve import proxy_options
from service.keys import create_key
from service.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent / "gallery"))
from gallery_support import running_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0.0
    clock.now += 60.0  # refills to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)].count(0.0) == 3


@pytest.fixture
def pack(tmp_path):
    return make_manifest_pack(tmp_path / "pack")


def test_a_burst_beyond_the_limit_gets_429_with_retry_after_per_key(app_client, pack, tmp_path):
    keys = tmp_path / "keys.json"
    _, first = create_key(keys, "first", ["gallery:read"])
    _, second = create_key(keys, "second", ["gallery:read"])
    with app_client(pack, api_keys_file=keys, rate_limit=0.2, rate_burst=3) as client:
        statuses = [
            client.get("/identities", headers={"X-API-Key": first}).status_code for _ in range(8)
        ]
        assert statuses == [200, 200, 200] + [429] * 5
        limited = client.get("/identities", headers={"X-API-Key": first})
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 5
        assert client.get("/identities", headers={"X-API-Key": second}).status_code == 200
        assert all(client.get("/readyz").status_code == 200 for _ in range(5))
        metrics = client.get("/metrics").text
    assert 'faceverify_errors_total{code="rate_limited"} 6.0' in metrics


def test_without_keys_the_limit_is_per_client_address(app_client, pack):
    with app_client(pack, rate_limit=0.5, rate_burst=2) as client:
        statuses = [client.get("/identities").status_code for _ in range(4)]
        assert statuses == [200, 200, 429, 429]


def test_unauthenticated_requests_do_not_spend_a_keys_tokens(app_client, pack, tmp_path):
    keys = tmp_path / "keys.json"
    _, secret = create_key(keys, "app", ["gallery:read"])
    with app_client(pack, api_keys_file=keys, rate_limit=0.1, rate_burst=1) as client:
        assert all(client.get("/identities").status_code == 401 for _ in range(3))
        assert client.get("/identities", headers={"X-API-Key": secret}).status_code == 200


def test_openapi_declares_429_only_when_limits_are_on(app_client, pack, tmp_path):
    with app_client(pack, rate_limit=1.0) as client:
        spec = client.get("/openapi.json").json()
    assert "429" in spec["paths"]["/verify"]["post"]["responses"]
    assert "429" not in spec["paths"]["/healthz"]["get"]["responses"]
    with app_client(pack, data_dir=tmp_path / "d2") as client:
        spec = client.get("/openapi.json").json()
    assert "429" not in spec["paths"]["/verify"]["post"]["responses"]


class ScanCountingDict(OrderedDict):
    """An OrderedDict that counts the walks over all its entries."""

    scans = 0

    def __iter__(self):
        ScanCountingDict.scans += 1
        return super().__iter__()

    def items(self):
        ScanCountingDict.scans += 1
        return super().items()

    def values(self):
        ScanCountingDict.scans += 1
        return super().values()


def test_200k_new_addresses_keep_the_buckets_at_their_cap_without_scanning_them(monkeypatch):
    monkeypatch.setattr(ratelimit, "OrderedDict", ScanCountingDict)
    ScanCountingDict.scans = 0
    clock = FakeClock()  # time stands still: no bucket refills, none may be dropped as "full"
    buckets = TokenBuckets(rate=0.05, burst=2, clock=clock)
    for i in range(200_000):
        assert buckets.take(f"address:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0.0
    assert len(buckets) == ratelimit.MAX_BUCKETS == 100_000
    assert ScanCountingDict.scans == 0  # each new address costs O(1), not a walk over 100,000


def test_a_client_that_keeps_sending_stays_limited_while_new_addresses_churn():
    clock = FakeClock()
    buckets = TokenBuckets(rate=0.01, burst=1, clock=clock, max_buckets=10)
    assert buckets.take("hammer") == 0.0
    for i in range(1_000):
        buckets.take(f"churn-{i}")
        assert buckets.take("hammer") > 0.0  # recently used: never the one evicted
    assert len(buckets) == 10


def test_forwarded_headers_are_ignored_unless_proxies_are_trusted():
    assert proxy_options(Settings(_env_file=None)) == {
        "proxy_headers": False,
        "forwarded_allow_ips": "",
    }
    trusted = Settings(_env_file=None, trusted_proxies="10.0.0.5, 10.1.0.0/16")
    assert proxy_options(trusted) == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.5,10.1.0.0/16",
    }
    everyone = Settings(_env_file=None, trusted_proxies="10.0.0.5,*")
    assert proxy_options(everyone)["forwarded_allow_ips"] == "*"
    with pytest.raises(ValueError, match="FACEVERIFY_TRUSTED_PROXIES"):
        proxy_options(Settings(_env_file=None, trusted_proxies="proxy.local"))


def _statuses_with_forwarded_addresses(url: str) -> list[int]:
    return [
        httpx.get(
            f"{url}/identities", headers={"X-Forwarded-For": f"203.0.113.{i}"}, timeout=10
        ).status_code
        for i in range(4)
    ]


@pytest.mark.slow
def test_x_forwarded_for_from_loopback_does_not_reset_the_limit(pack, tmp_path):
    """The served process on 127.0.0.1: uvicorn used to believe X-Forwarded-For from loopback,
    so four requests with four forwarded addresses all got 200."""
    limits = {"rate_limit": 0.05, "rate_burst": 2}
    with running_server(pack, tmp_path / "data", **limits) as server:
        assert _statuses_with_forwarded_addresses(server.url) == [200, 200, 429, 429]
    # Trusting the loopback proxy is a choice an operator makes: then the header counts.
    trusted = {**limits, "trusted_proxies": "127.0.0.1"}
    with running_server(pack, tmp_path / "data2", **trusted) as server:
        assert _statuses_with_forwarded_addresses(server.url) == [200, 200, 200, 200]


def test_ipv6_clients_share_a_bucket_per_64_network():
    group = ratelimit.address_group
    assert group("2001:db8:1:2::1") == group("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert group("2001:db8:1:3::1") != group("2001:db8:1:2::1")
    assert group("::ffff:192.0.2.7") == "192.0.2.7" and group("192.0.2.7") == "192.0.2.7"
    scope = {"type": "http", "client": ("2001:db8:1:2:aaaa::9", 5000), "state": {}}
    assert ratelimit.client_of(scope) == "address:2001:db8:1:2::/64"
