"""The audit trail of gallery changes: who (key name) did what (action) to which identity.

Each change is one structured log line on the `service.audit` logger (a JSON object: time, key,
action, identity_id, face_id) and one increment of `faceverify_gallery_changes_total{action}`
(no key name: /metrics is open to any scraper). Never an embedding, a photo or a name: the log
says who touched which record, not what the record holds. Without keys the key name is
`anonymous`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from fastapi import Request

from service.api.auth import STATE_KEY_NAME
from service.metrics import Metrics

log = logging.getLogger("service.audit")

ANONYMOUS = "anonymous"


class AuditAction(StrEnum):
    IDENTITY_CREATE = "identity_create"
    IDENTITY_UPDATE = "identity_update"
    IDENTITY_DELETE = "identity_delete"
    FACE_ADD = "face_add"
    FACE_DELETE = "face_delete"


@dataclass(frozen=True)
class AuditTrail:
    """Records the changes one request makes, in the name of its key."""

    key_name: str
    metrics: Metrics | None

    def record(self, action: AuditAction, identity_id: str, face_id: str | None = None) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "key": self.key_name,
            "action": action.value,
            "identity_id": identity_id,
        }
        if face_id is not None:
            entry["face_id"] = face_id
        log.info("audit %s", json.dumps(entry, sort_keys=True))
        if self.metrics is not None:
            self.metrics.gallery_changes.labels(action.value).inc()


def get_audit(request: Request) -> AuditTrail:
    """The request's audit trail (a FastAPI dependency)."""
    name = getattr(request.state, STATE_KEY_NAME, None) or ANONYMOUS
    return AuditTrail(key_name=name, metrics=getattr(request.app.state, "metrics", None))
