"""Connections that never finish their request headers are closed.

uvicorn bounds the wait between requests on a kept-alive connection (5 s), but not the time a
request's line and headers take to arrive: a client that connects and sends nothing, or sends
its headers a byte at a time, or vanishes mid-headers without a TCP reset, holds its
connection (a file descriptor, a protocol object) for as long as the process lives, and a
few thousand of them exhaust the process's file descriptors. `HeaderTimeoutProtocol` is
uvicorn's HTTP/1.1 protocol with one timer: from the moment the connection opens, or the
previous answer was sent, the next request's headers must be complete within
FACEVERIFY_HEADER_TIMEOUT_S, else the connection is closed without an answer (what uvicorn
does to an idle kept-alive connection). The body then has FACEVERIFY_BODY_TIMEOUT_S
(`service.api.uploads`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol closing connections whose request headers are overdue."""

    def __init__(self, *args, header_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        # IDLE: no request line and headers complete since the timer was armed.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.debug(
                "request headers not complete in %g s: closing", self.header_timeout_s
            )
            self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> Callable[..., HeaderTimeoutProtocol]:
    """What `uvicorn.run(http=...)` takes: the protocol with its timeout (picklable, for the
    worker processes)."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout_s=header_timeout_s)
