"""Logging of the service's processes: one format and one level for our loggers and uvicorn's.

uvicorn applies `log_config` in the parent and again in every worker process it spawns, so the
service's own messages (the pack loaded, the onnxruntime provider really in use, the gallery
index built) reach the log from each worker. A root-logger setup in the parent alone would not:
spawned workers start with bare logging and drop everything below WARNING.

The access log never holds a secret a client put in a URL: query values whose names look like
credentials (`?api_key=...`, `token`, `password`, ...) are written as `[redacted]`. The service
takes keys only in headers and refuses such a request, but the line is logged before anyone
reads it.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from copy import copy
from typing import Any
from urllib.parse import unquote_plus

from uvicorn.logging import AccessFormatter

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
ACCESS_FORMAT = (
    "%(asctime)s %(levelname)s [%(process)d] access: "
    '%(client_addr)s "%(request_line)s" %(status_code)s'
)
# Loggers of libraries that are chatty at INFO without telling an operator anything:
# faiss' loader reports each CPU feature it probes.
QUIET_LOGGERS = ("faiss.loader",)
# Query parameter names whose values are secrets: a name that is one of these words, or ends
# in one after `_`, `-` or `.` (`api_key`, `x-api-key`, `access_token`, `db.password`).
SECRET_QUERY_WORDS = (
    "key",
    "apikey",
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "signature",
    "sig",
    "session",
)
REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"(?:^|[_.\-])(?:" + "|".join(SECRET_QUERY_WORDS) + r")$", re.IGNORECASE)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(unquote_plus(name).strip()))


def redact_query(path: str) -> str:
    """`path?query` with the values of secret-looking parameters replaced by `[redacted]`;
    everything else (order, other values, their encoding) is kept as sent."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={REDACTED}" if eq and _is_secret_name(name) else item)
    return f"{base}?{'&'.join(parts)}"


class RedactingAccessFormatter(AccessFormatter):
    """uvicorn's access line with secret query values redacted (`redact_query`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record = copy(record)
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return super().formatMessage(record)


class StderrHandler(logging.StreamHandler):
    """Writes each record to the `sys.stderr` of that moment, not the one at configuration:
    a process that swaps stderr (a test capturing output, a host redirecting it) keeps its
    log instead of writing to a closed stream (like `logging.lastResort`)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary for `level` (debug, info, warning, error)."""
    level = level.upper()
    stderr = {"()": StderrHandler}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": LOG_FORMAT},
            "access": {
                "()": "service.logs.RedactingAccessFormatter",
                "fmt": ACCESS_FORMAT,
                "use_colors": False,
            },
        },
        "handlers": {
            "default": {**stderr, "formatter": "default"},
            "access": {**stderr, "formatter": "access"},
        },
        "loggers": {
            "service": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def configure_logging(level: str) -> None:
    """Apply `logging_config(level)` to this process."""
    logging.config.dictConfig(logging_config(level))
