"""Per-client rate limits: a token bucket per API key name (per client address without keys).

Each bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request takes
one token, and one that finds the bucket empty gets 429 `rate_limited` with `Retry-After`
(whole seconds until a token is back). Buckets live in each worker's memory: with N workers a
client may get up to N times the rate when its requests are spread over them, so set
FACEVERIFY_RATE_LIMIT to the per-client budget divided by FACEVERIFY_WORKERS.

Checked after the key (so a bucket belongs to a known key) and before the body is read; probes,
the scrape and the docs are never limited.

The client address is the TCP peer's, unless FACEVERIFY_TRUSTED_PROXIES names the proxy in
front (then uvicorn takes it from that proxy's `X-Forwarded-For`): a header a client may set
itself must never choose its bucket. The buckets are bounded: at `max_buckets` the least
recently used one is dropped (O(1), an `OrderedDict`), so a flood of new addresses costs
constant time per request and constant memory; a dropped bucket that had not refilled gives
that client a fresh burst, the price of the bound.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import OPEN_PATHS, STATE_KEY_NAME
from service.api.errors import error_response
from service.errors import ErrorCode

# Buckets kept per worker; beyond, the least recently used is dropped (~200 bytes each: 20 MB).
MAX_BUCKETS = 100_000
# IPv6 clients are limited per /64 network: the smallest block a subscriber is given.
IPV6_SUBSCRIBER_PREFIX = 64


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`take(client)` → 0.0 when allowed, else the seconds until a token is available."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1 or max_buckets < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_buckets >= 1")
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self._clock = clock
        # Least recently used first: `take` moves a client's bucket to the end.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                while len(self._buckets) >= self.max_buckets:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[client] = _Bucket(float(self.burst), now)
            else:
                self._buckets.move_to_end(client)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def client_of(scope: Scope) -> str:
    """Who a bucket belongs to: the key's name, else the client address (its /64 network for
    IPv6, the block one subscriber gets, so a client cannot take 2**64 fresh buckets)."""
    name = scope.get("state", {}).get(STATE_KEY_NAME)
    if name is not None:
        return f"key:{name}"
    client = scope.get("client")
    return f"address:{address_group(client[0]) if client else 'unknown'}"


def address_group(address: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64 network (RFC 6177 gives each
    subscriber a /64 at least); anything else (a unix socket path) as it is."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_SUBSCRIBER_PREFIX), strict=False))
    return address


class RateLimit:
    """ASGI middleware answering 429 `rate_limited` when a client's bucket is empty."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(client_of(scope))
        if wait <= 0.0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        message = (
            f"rate limit of {self.buckets.rate:g} requests/s (burst {self.buckets.burst}) "
            f"exceeded; retry in {retry_after} s"
        )
        response = error_response(
            Request(scope),
            ErrorCode.RATE_LIMITED,
            message,
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


def document_rate_limit(schema: dict) -> dict:
    """Declare the 429 `rate_limited` answer (with Retry-After) on every limited operation of
    an OpenAPI schema (in place; returns `schema`)."""
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation.setdefault("responses", {})["429"] = {
                "description": "rate_limited (see the Retry-After header)",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                },
            }
    return schema
