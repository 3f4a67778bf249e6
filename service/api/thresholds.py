"""Which threshold a decision uses, and where it came from: the request's `threshold`, the
pack's calibration for the request's `target_fmr`, for /identify the threshold measured on the
gallery for a `target_fpir` (`service.gallery.fpir`), or the server default."""

from __future__ import annotations

from service.api.deps import Services
from service.errors import ErrorCode, ServiceError
from service.gallery.fpir import FpirThreshold

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


def resolve_identify_threshold(
    services: Services,
    threshold: float | None,
    target_fmr: float | None,
    target_fpir: float | None,
) -> tuple[float, str, FpirThreshold | None]:
    """(threshold, source, FPIR behind it): an explicit `threshold` or `target_fmr` works as
    for /verify; else `target_fpir`, or FACEVERIFY_IDENTIFY_FPIR, gives the threshold measured
    on the gallery for its size (`fpir:<rate>@n=<identities>`); else the server default."""
    chosen = sum(value is not None for value in (threshold, target_fmr, target_fpir))
    if chosen > 1:
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR,
            "send at most one of `threshold`, `target_fmr` and `target_fpir`",
        )
    if target_fpir is None and (threshold is not None or target_fmr is not None):
        return (*resolve_threshold(services, threshold, target_fmr), None)
    wanted = target_fpir if target_fpir is not None else services.settings.identify_fpir
    if wanted is None or services.fpir is None:
        if target_fpir is not None:
            raise ServiceError(ErrorCode.NOT_READY, "the gallery is not open")
        return (*services.default_threshold(), None)
    found = services.fpir.current().threshold(wanted, services.pack.manifest.thresholds)
    return found.threshold, found.source, found
