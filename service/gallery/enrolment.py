"""Which face of an enrolment photo goes into the gallery, and which photos are refused.

A gallery is only as good as its enrolment photos, so refusals are explicit (each with a stable
code the client can act on) instead of enrolling whatever the detector found first.
"""

from __future__ import annotations

from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import AnalyzedImage, select_face
from service.faces.quality import QualityLevel, require_quality
from service.faces.types import EmbeddedFace


def choose_enrolment_face(
    image: AnalyzedImage,
    *,
    require_single_face: bool,
    min_quality: float,
    min_level: QualityLevel | None = None,
) -> EmbeddedFace:
    """The largest usable face of an enrolment photo.

    Raises `no_face` / `face_too_small` (nothing usable), `multiple_faces` (more than one
    usable face while `require_single_face`; faces under the minimum size do not count) and
    `low_quality` (quality level under `min_level` (FACEVERIFY_ENROL_QUALITY), with the
    reasons; or embedding norm under `min_quality` (FACEVERIFY_MIN_ENROL_QUALITY), when that
    is above 0).
    """
    face = select_face(image, "largest")
    if require_single_face and len(image.faces) > 1:
        raise ServiceError(
            ErrorCode.MULTIPLE_FACES,
            f"the photo shows {len(image.faces)} faces and this service enrols only photos of "
            "exactly one person; crop the photo to the person to enrol",
        )
    require_quality(face.quality, min_level, "enrolment")
    norm = face.quality.embedding_norm
    if min_quality > 0 and norm < min_quality:
        raise ServiceError(
            ErrorCode.LOW_QUALITY,
            f"face quality (embedding norm) {norm:.2f} is below the minimum {min_quality:.2f} "
            "for enrolment; use a sharper, well-lit, frontal photo",
        )
    return face


def enrolment_level(policy: str) -> QualityLevel | None:
    """FACEVERIFY_ENROL_QUALITY as the lowest level enrolled (None: no level check)."""
    return None if policy in ("off", "low") else QualityLevel(policy)
