"""A real service on a loopback port and a real Chromium that may reach only that service.

The browser tests drive Debian's Chromium (/usr/bin/chromium, or FACEVERIFY_TEST_CHROMIUM)
through Playwright; Playwright's own browser download is never used. Every request to a host
other than the service is aborted and recorded, so a page that needs the internet fails its test.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from service.app import create_app
from service.settings import Settings

CHROMIUM = Path(os.environ.get("FACEVERIFY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The service loads a pack in about a second; a loaded machine may need much longer.
START_TIMEOUT_S = 60.0


@contextmanager
def live_service(settings: Settings) -> Iterator[str]:
    """Run the app under uvicorn in a thread on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the service stopped during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class NetworkLog:
    """What a page asked for that it should not have, or did not get."""

    base_url: str
    blocked: list[str] = field(default_factory=list)  # requests to other hosts (aborted)
    failed: list[str] = field(default_factory=list)  # requests that got no answer
    errors: list[str] = field(default_factory=list)  # own requests answered 4xx/5xx
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        def route(route) -> None:
            url = route.request.url
            if url.startswith(self.base_url + "/") or url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                self.blocked.append(url)
                route.abort("internetdisconnected")

        page.route("**/*", route)
        page.on("requestfailed", lambda request: self.failed.append(request.url))
        page.on(
            "response",
            lambda response: (
                response.status >= 400 and self.errors.append(f"{response.status} {response.url}")
            ),
        )
        page.on(
            "console",
            lambda message: message.type == "error" and self.console_errors.append(message.text),
        )
