"""Which `Host` names the service answers: the defence against DNS rebinding.

A page on an attacker's site can make its own name resolve to 127.0.0.1 (DNS rebinding); the
browser then sends that page's requests, and lets the page read the answers, to a service on the
victim's machine, with `Host: attacker.example`. A service that answers only the names it is
really reached by refuses them: 400 `host_not_allowed`.

The allow-list is FACEVERIFY_ALLOWED_HOSTS: names or addresses, each with or without a port
(without: any port). Unset, it holds the localhost names and loopback addresses, plus
FACEVERIFY_HOST when it is a real address rather than a wildcard (0.0.0.0, ::); `*` allows any
name (behind a proxy that checks `Host` itself). The liveness and readiness probes are answered
whatever the `Host`: they carry no data, and orchestrators send the pod's address there.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ErrorCode
from service.settings import Settings

# Names every machine gives its loopback interface (RFC 6761 reserves `localhost`).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Bind addresses meaning "every interface": not a name anybody reaches the service by.
WILDCARD_BIND_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
# Answered for any `Host`: probes that carry no data (see the module docstring).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# How much of a refused `Host` the error message repeats.
MAX_ECHOED_HOST_CHARS = 100
# A DNS name or an IPv4 address (letters, digits, `-`, `_`, dots between labels).
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")


def _is_ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` → (lower-case name without brackets or a trailing dot,
    port or None); None when it is not a host at all."""
    value = value.strip().lower()
    port_text = ""
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    else:
        name = value  # a bare name, or an IPv6 address written without brackets
    name = name.rstrip(".")
    if not _HOST_NAME.fullmatch(name) and not _is_ipv6(name):
        return None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return name, int(port_text)
    return name, None


@dataclass(frozen=True)
class HostAllowList:
    """The `Host` values the service answers: `any_host`, or one of `entries` (a name with a
    port, or with None: any port)."""

    entries: frozenset[tuple[str, int | None]]
    any_host: bool = False

    @classmethod
    def parse(cls, text: str) -> HostAllowList:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if "*" in items:
            return cls(frozenset(), any_host=True)
        entries = set()
        for item in items:
            host = split_host(item)
            if host is None:
                raise ValueError(f"FACEVERIFY_ALLOWED_HOSTS: {item!r} is not a host name")
            entries.add(host)
        return cls(frozenset(entries))

    @classmethod
    def from_settings(cls, settings: Settings) -> HostAllowList:
        if settings.allowed_hosts.strip():
            return cls.parse(settings.allowed_hosts)
        names = list(LOOPBACK_HOSTS)
        if settings.host.strip().lower() not in WILDCARD_BIND_HOSTS:
            names.append(settings.host)
        return cls.parse(",".join(names))

    def allows(self, host_header: str | None) -> bool:
        if self.any_host:
            return True
        host = split_host(host_header or "")
        if host is None:
            return False
        name, port = host
        return (name, None) in self.entries or (port is not None and host in self.entries)


class HostCheck:
    """ASGI middleware answering 400 `host_not_allowed` to a `Host` outside the allow-list."""

    def __init__(self, app: ASGIApp, allowed: HostAllowList) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if self.allowed.allows(host):
            await self.app(scope, receive, send)
            return
        shown = (host or "")[:MAX_ECHOED_HOST_CHARS]
        message = (
            f"this service does not answer Host {shown!r}; add the name clients use to "
            "FACEVERIFY_ALLOWED_HOSTS"
            if host
            else "a Host header is required"
        )
        response = error_response(Request(scope), ErrorCode.HOST_NOT_ALLOWED, message)
        await response(scope, receive, send)
