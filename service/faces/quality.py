"""How far a face can be trusted: measurements, an overall level, and the reasons behind it.

Pure functions of what the pipeline already has (the detection, the aligned crop, the
embedding's norm): no model of its own. Each measurement is compared with two limits: past the
`low` limit the face gets a reason code (and the level `low`); between the `low` and the
`medium` limit it is `medium`; otherwise `high`. So the level only drops as a degradation
grows, and a `low` level always comes with at least one reason.

The limits were chosen on the shared test photos (docs/quality.md tells how): clean photos
are `high` with no reason; controlled degradations (blur, darkening, over-exposure,
downscaling, a turned or half face) cross the limits where recognition starts to fail.

Pose is estimated from the 5 landmarks alone (no 3D model): roll is the angle of the eye line;
yaw and pitch are the nose tip's offset from where it sits on a frontal face, relative to the
face's size and an assumed nose depth. Good enough to tell frontal from turned, not to measure
angles to the degree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from service.errors import ErrorCode, ServiceError
from service.faces.types import (
    DetectedFace,
    FaceQuality,
    Pose,
    QualityLevel,
    QualityReason,
)

# Nose tip depth in front of the eye plane, in units of the inter-ocular distance: about
# 30-35 mm against 60-65 mm between the eyes (adult anthropometric averages).
NOSE_DEPTH = 0.5
# Where the nose tip sits between the eye line (0) and the mouth line (1) on a frontal face:
# the median over the 61 shared deepface photos with SCRFD's landmarks (the ArcFace template
# says 0.495, but SCRFD puts the nose tip lower than the template does).
FRONTAL_NOSE_HEIGHT = 0.58
# The part of the aligned 112x112 crop that is face, not background (rows, columns): around
# the template's eyes, nose and mouth, used for brightness.
FACE_REGION = (slice(36, 104), slice(28, 84))


@dataclass(frozen=True)
class QualityLimits:
    """Where each measurement turns a face `low` (with a reason) or `medium`. Chosen on the
    shared photos; see docs/quality.md. The embedding-norm limits depend on the recognizer
    (each model has its own norm scale): 0 disables them."""

    # Pixels between the eyes in the photo: the 112x112 template has 35.2, so under 36 the
    # aligned crop is upsampled (medium), under 18 twice over (low).
    inter_ocular_low: float = 18.0
    inter_ocular_medium: float = 36.0
    # Degrees. Clean shared photos stay within |yaw| 30, |pitch| 28, |roll| 15.
    yaw_low: float = 45.0
    yaw_medium: float = 25.0
    pitch_low: float = 40.0
    pitch_medium: float = 25.0
    roll_low: float = 40.0
    roll_medium: float = 20.0
    # Variance of the Laplacian on the aligned grey crop: clean photos 180..7300 (median 1500);
    # a Gaussian blur of sigma 1 crop pixel gives 40..90, sigma 2 gives 10..20.
    sharpness_low: float = 40.0
    sharpness_medium: float = 120.0
    # Mean grey level of the face region, 0..255: clean photos 95..193.
    brightness_dark_low: float = 40.0
    brightness_dark_medium: float = 80.0
    brightness_bright_low: float = 220.0
    brightness_bright_medium: float = 200.0
    # SCRFD score: clean photos 0.70..0.90; half-face crops and heavy blur fall under 0.6.
    detection_score_low: float = 0.6
    detection_score_medium: float = 0.68
    # Recognizer-specific (FACEVERIFY_MIN_EMBEDDING_NORM); 0 = not checked.
    embedding_norm_low: float = 0.0
    embedding_norm_medium: float = 0.0


def estimate_pose(landmarks: np.ndarray) -> Pose:
    """Yaw, pitch, roll (degrees) from the 5 landmarks: left eye, right eye, nose, mouth left,
    mouth right (image coordinates)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    eye_vector = right_eye - left_eye
    roll = math.degrees(math.atan2(eye_vector[1], eye_vector[0]))
    # Undo the roll around the eyes' midpoint, so x runs along the eye line.
    eyes_mid = (left_eye + right_eye) / 2.0
    angle = -math.radians(roll)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    upright = (points - eyes_mid) @ rotation.T
    left_eye, right_eye, nose, mouth_left, mouth_right = upright
    inter_ocular = max(float(right_eye[0] - left_eye[0]), 1e-6)
    # Centre of the face plane: the eyes and mouth corners lie on it, the nose tip does not.
    centre_x = float((left_eye[0] + right_eye[0] + mouth_left[0] + mouth_right[0]) / 4.0)
    yaw = math.degrees(math.atan2(float(nose[0]) - centre_x, NOSE_DEPTH * inter_ocular))
    mouth_y = float((mouth_left[1] + mouth_right[1]) / 2.0)
    expected_nose_y = FRONTAL_NOSE_HEIGHT * mouth_y
    pitch = math.degrees(
        math.atan2(float(nose[1]) - expected_nose_y, NOSE_DEPTH * abs(inter_ocular))
    )
    return Pose(yaw=yaw, pitch=pitch, roll=roll)


def sharpness_of(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey aligned crop: edges make it large, blur small."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def brightness_of(crop: np.ndarray) -> float:
    """Mean grey level (0..255) of the face region of an aligned 112x112 BGR crop."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    scale = grey.shape[0] / 112.0
    rows, cols = FACE_REGION
    region = grey[
        int(rows.start * scale) : int(rows.stop * scale),
        int(cols.start * scale) : int(cols.stop * scale),
    ]
    return float(region.mean())


def _grade(
    value: float, low: float, medium: float, *, higher_is_better: bool = True
) -> QualityLevel:
    if not higher_is_better:
        value, low, medium = -value, -low, -medium
    if value < low:
        return QualityLevel.LOW
    if value < medium:
        return QualityLevel.MEDIUM
    return QualityLevel.HIGH


def assess_quality(
    face: DetectedFace,
    crop: np.ndarray,
    embedding_norm: float,
    limits: QualityLimits = QualityLimits(),
) -> FaceQuality:
    """Measure one face (its detection, aligned BGR crop and embedding norm) and grade it."""
    landmarks = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
    inter_ocular = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    pose = estimate_pose(landmarks)
    sharpness = sharpness_of(crop)
    brightness = brightness_of(crop)
    grades: list[tuple[QualityLevel, QualityReason]] = [
        (
            _grade(inter_ocular, limits.inter_ocular_low, limits.inter_ocular_medium),
            QualityReason.SMALL_FACE,
        ),
        (
            min(
                _grade(abs(pose.yaw), limits.yaw_low, limits.yaw_medium, higher_is_better=False),
                _grade(
                    abs(pose.pitch), limits.pitch_low, limits.pitch_medium, higher_is_better=False
                ),
                _grade(abs(pose.roll), limits.roll_low, limits.roll_medium, higher_is_better=False),
                key=lambda level: level.rank,
            ),
            QualityReason.EXTREME_POSE,
        ),
        (
            _grade(sharpness, limits.sharpness_low, limits.sharpness_medium),
            QualityReason.BLURRY,
        ),
        (
            _grade(brightness, limits.brightness_dark_low, limits.brightness_dark_medium),
            QualityReason.UNDEREXPOSED,
        ),
        (
            _grade(
                brightness,
                limits.brightness_bright_low,
                limits.brightness_bright_medium,
                higher_is_better=False,
            ),
            QualityReason.OVEREXPOSED,
        ),
        (
            _grade(face.score, limits.detection_score_low, limits.detection_score_medium),
            QualityReason.LOW_DETECTION_SCORE,
        ),
        (
            _grade(embedding_norm, limits.embedding_norm_low, limits.embedding_norm_medium),
            QualityReason.LOW_EMBEDDING_NORM,
        ),
    ]
    reasons = tuple(reason for level, reason in grades if level is QualityLevel.LOW)
    level = min((level for level, _ in grades), key=lambda item: item.rank)
    return FaceQuality(
        detection_score=float(face.score),
        inter_ocular_px=inter_ocular,
        pose=pose,
        sharpness=sharpness,
        brightness=brightness,
        embedding_norm=float(embedding_norm),
        level=level,
        reasons=reasons,
    )


def require_quality(quality: FaceQuality, minimum: QualityLevel | None, purpose: str) -> None:
    """Raise 422 `low_quality` (with the reasons) when `quality` is under `minimum`."""
    if minimum is None or quality.at_least(minimum):
        return
    why = ", ".join(quality.reasons) or "borderline measurements"
    raise ServiceError(
        ErrorCode.LOW_QUALITY,
        f"face quality is {quality.level} ({why}) and {purpose} needs {minimum} or better; "
        "send a sharper, well-lit, frontal photo with the face larger in the frame",
    )
