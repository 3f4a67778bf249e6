"""Which threshold a decision uses, and where it came from: the request's `threshold`, the
pack's calibration for the request's `target_fmr`, or the server default."""

from __future__ import annotations

from service.api.deps import Services
from service.errors import ErrorCode, ServiceError

SOURCE_REQUEST = "request"


def resolve_threshold(
    services: Services, threshold: float | None, target_fmr: float | None
) -> tuple[float, str]:
    """(threshold, source): `request`, `calibration:<fmr>`, `settings` (FACEVERIFY_THRESHOLD)
    or `pack default`. A `target_fmr` the pack has no calibration for is a validation_error
    that lists the calibrated ones."""
    if threshold is not None and target_fmr is not None:
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR, "send either `threshold` or `target_fmr`, not both"
        )
    if threshold is not None:
        return threshold, SOURCE_REQUEST
    if target_fmr is not None:
        calibration = services.pack.manifest.thresholds
        entry = calibration.for_fmr(target_fmr) if calibration else None
        if entry is None:
            available = (
                ", ".join(f"{fmr:g}" for fmr in calibration.available_fmrs())
                if calibration and calibration.thresholds
                else "none: run `python -m service calibrate` on labelled pairs"
            )
            raise ServiceError(
                ErrorCode.VALIDATION_ERROR,
                f"target_fmr: the model pack has no threshold calibrated for {target_fmr:g}; "
                f"calibrated target FMRs: {available}",
            )
        return entry.threshold, f"calibration:{entry.fmr:g}"
    return services.default_threshold()
