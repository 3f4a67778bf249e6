"""Logging of the service's processes: one format and one level for our loggers and uvicorn's.

uvicorn applies `log_config` in the parent and again in every worker process it spawns, so the
service's own messages (the pack loaded, the onnxruntime provider really in use, the gallery
index built) reach the log from each worker. A root-logger setup in the parent alone would not:
spawned workers start with bare logging and drop everything below WARNING.
"""

from __future__ import annotations

import logging.config
import sys
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
ACCESS_FORMAT = (
    "%(asctime)s %(levelname)s [%(process)d] access: "
    '%(client_addr)s "%(request_line)s" %(status_code)s'
)
# Loggers of libraries that are chatty at INFO without telling an operator anything:
# faiss' loader reports each CPU feature it probes.
QUIET_LOGGERS = ("faiss.loader",)


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
                "()": "uvicorn.logging.AccessFormatter",
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
