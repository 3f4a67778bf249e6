"""Rate limits: a token bucket per key (per client address without keys); a burst beyond it
gets 429 `rate_limited` with Retry-After; probes are never limited."""

from __future__ import annotations

import pytest
from synthetic_models import make_manifest_pack

from service.api.ratelimit import TokenBuckets
from service.keys import create_key


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
