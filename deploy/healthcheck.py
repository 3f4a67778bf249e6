"""Container health probe: exit 0 when the service answers `GET /healthz` with 200, else 1.

Slim images have no curl or wget, so the image's HEALTHCHECK runs this with the service's own
Python. It reads the port from FACEVERIFY_PORT, like the service does.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8000"  # service.settings.Settings.port
# Below the HEALTHCHECK --timeout (5 s), so a hung service is reported as unhealthy by us.
TIMEOUT_SECONDS = 4.0


def main() -> int:
    port = os.environ.get("FACEVERIFY_PORT", DEFAULT_PORT)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
