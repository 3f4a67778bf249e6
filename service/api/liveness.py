"""The liveness option of the face routes: whether a request runs the check, and the refusal
that FACEVERIFY_LIVENESS=require makes of an attack.

`liveness=true` on a request runs the check (and reports it) whatever the setting; `false`
skips it under `report`; under `require` every request is checked and no request can opt out.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.api.deps import Services
from service.errors import ErrorCode, ServiceError
from service.faces.types import EmbeddedFace

# The form field's description, the same on every route.
LIVENESS_FIELD = (
    "Passive liveness check: each used face gets `liveness` {score, live, threshold, model} "
    "(default: FACEVERIFY_LIVENESS; under `require` it always runs)."
)


def liveness_wanted(services: Services, requested: bool | None) -> bool:
    """Whether this request runs the liveness check; 409 `liveness_unavailable` when it must
    and the pack has none."""
    mode = services.settings.liveness
    wanted = mode == "require" or (mode == "report" if requested is None else requested)
    if wanted and services.pipeline.liveness is None:
        raise ServiceError(
            ErrorCode.LIVENESS_UNAVAILABLE,
            "this server's model pack has no liveness models; send the request without "
            "`liveness`, or ask the operator to add them (`python -m training export-liveness`)",
        )
    return wanted


def require_live(services: Services, faces: Sequence[EmbeddedFace]) -> None:
    """Under FACEVERIFY_LIVENESS=require, 422 `liveness_failed` when any of `faces` (those the
    request compares, searches or enrols) was judged an attack."""
    if services.settings.liveness != "require":
        return
    refused = [face.liveness for face in faces if face.liveness and not face.liveness.live]
    if not refused:
        return
    services.metrics.liveness_refusals.inc()
    worst = min(verdict.score for verdict in refused)
    raise ServiceError(
        ErrorCode.LIVENESS_FAILED,
        f"{len(refused)} face(s) judged a presentation attack (liveness score {worst:.3f} < "
        f"{refused[0].threshold:g}); take a photo of the person themselves, not of a print "
        "or a screen",
    )
