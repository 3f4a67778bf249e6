"""Calibrated thresholds of a pack: the cosine threshold for each target false match rate (FMR),
measured by `python -m service calibrate` on a named data set.

Ours live in the pack's manifest (`pack.json` → `thresholds`); InsightFace folders have no
manifest of ours, so theirs live beside the models in `thresholds.json`, which `load_pack`
reads. A calibration names the recognizer it was measured with (sha256): one measured with
other weights is ignored with a warning, never applied.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from service.errors import PackError
from service.packs.checksums import first_error

log = logging.getLogger(__name__)

SIDECAR_NAME = "thresholds.json"
# Two target FMRs are the same when they differ by less than this (relative): 1e-3 == 0.001.
FMR_TOLERANCE = 1e-6


class FmrThreshold(BaseModel):
    """The threshold that keeps the false match rate at or under `fmr` on the data set."""

    fmr: float = Field(gt=0.0, lt=1.0, description="Target false match rate.")
    threshold: float = Field(ge=-1.0, le=1.0, description="Cosine threshold reaching it.")
    measured_fmr: float = Field(description="FMR at the threshold on the impostor pairs.")
    fnmr: float = Field(description="False non-match rate at the threshold (genuine pairs).")
    interval: tuple[float, float] = Field(
        description="95% bootstrap interval of the threshold (resampled pairs)."
    )


class Calibration(BaseModel):
    """Thresholds by target FMR, and where they were measured."""

    dataset: str = Field(description="Pairs the thresholds were measured on.")
    genuine_pairs: int = Field(ge=0)
    impostor_pairs: int = Field(ge=0)
    date: str = Field(description="ISO 8601 date of the calibration.")
    recognizer_sha256: str | None = Field(None, description="Recognizer it was measured with.")
    thresholds: list[FmrThreshold] = Field(default_factory=list)
    unsupported_fmrs: list[float] = Field(
        default_factory=list,
        description="Targets asked for that the number of impostor pairs cannot support.",
    )

    def available_fmrs(self) -> list[float]:
        return [entry.fmr for entry in self.thresholds]

    def for_fmr(self, fmr: float) -> FmrThreshold | None:
        for entry in self.thresholds:
            if math.isclose(entry.fmr, fmr, rel_tol=FMR_TOLERANCE):
                return entry
        return None


def read_sidecar(directory: Path, recognizer_sha256: str | None) -> Calibration | None:
    """The calibration beside an InsightFace folder's models, if any and if it was measured
    with this recognizer."""
    path = directory / SIDECAR_NAME
    if not path.is_file():
        return None
    try:
        calibration = Calibration.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        reason = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise PackError(
            f"the calibration file {path} is invalid ({reason}): fix or remove it"
        ) from exc
    return usable(calibration, recognizer_sha256, path)


def usable(
    calibration: Calibration | None, recognizer_sha256: str | None, where: Path
) -> Calibration | None:
    """The calibration, unless it names another recognizer than the pack's."""
    if calibration is None:
        return None
    measured_with = calibration.recognizer_sha256
    if measured_with and recognizer_sha256 and measured_with != recognizer_sha256:
        log.warning(
            "calibration in %s was measured with another recognizer (%s, not %s): ignored; "
            "run `python -m service calibrate` again",
            where,
            measured_with[:12],
            recognizer_sha256[:12],
        )
        return None
    return calibration


def save_calibration(directory: Path, calibration: Calibration, manifest_name: str) -> Path:
    """Write the calibration into the pack's manifest (`thresholds`), or beside an InsightFace
    folder's models in SIDECAR_NAME; returns the file written. Atomic (write, then rename)."""
    manifest_path = directory / manifest_name
    if manifest_path.is_file():
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
        document["thresholds"] = calibration.model_dump(mode="json")
        target, text = manifest_path, json.dumps(document, indent=2) + "\n"
    else:
        target = directory / SIDECAR_NAME
        text = calibration.model_dump_json(indent=2) + "\n"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    return target
