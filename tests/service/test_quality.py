"""Quality assessment: pose from landmarks, sharpness, exposure, the level and its reasons; on
real photos, controlled degradations give the expected reason, the clean photo none, and the
level never rises as a degradation grows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from degradations import darken, downscale, gaussian_blur, half_face, over_expose, rotate
from synthetic_models import SyntheticFace, make_manifest_pack

from service.errors import ServiceError
from service.faces.alignment import ALIGNED_SIZE, template_for
from service.faces.quality import (
    QualityLevel,
    QualityReason,
    assess_quality,
    estimate_pose,
    require_quality,
    sharpness_of,
)
from service.faces.types import DetectedFace

FRONTAL = template_for(ALIGNED_SIZE).astype(np.float64)


def _rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = points.mean(axis=0)
    return (points - centre) @ rotation.T + centre


def test_pose_of_the_frontal_template_is_near_zero():
    pose = estimate_pose(FRONTAL)
    # Pitch is centred on SCRFD's nose height (lower than the template's): about -11 here.
    assert abs(pose.yaw) < 1.0 and abs(pose.roll) < 1.0 and abs(pose.pitch) < 15.0


def test_roll_follows_the_eye_line_and_yaw_the_nose():
    assert estimate_pose(_rotated(FRONTAL, 30.0)).roll == pytest.approx(30.0, abs=1.0)
    turned = FRONTAL.copy()
    turned[2, 0] += 15.0  # nose tip to the image's right
    assert estimate_pose(turned).yaw > 35.0
    turned[2, 0] -= 30.0
    assert estimate_pose(turned).yaw < -35.0


def _crop(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)


def _face(landmarks: np.ndarray = FRONTAL, score: float = 0.85, scale: float = 3.0):
    points = landmarks * scale
    box = np.array([*points.min(0) - 20, *points.max(0) + 20], dtype=np.float32)
    return DetectedFace(box=box, landmarks=points.astype(np.float32), score=score)


def test_a_sharp_well_lit_frontal_face_is_high_with_no_reason():
    quality = assess_quality(_face(), _crop(), embedding_norm=20.0)
    assert quality.level is QualityLevel.HIGH and quality.reasons == ()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"crop": cv2.GaussianBlur(_crop(), (0, 0), 3.0)}, QualityReason.BLURRY),
        ({"crop": (_crop() // 8)}, QualityReason.UNDEREXPOSED),
        ({"crop": np.full((112, 112, 3), 250, np.uint8)}, QualityReason.OVEREXPOSED),
        ({"face": _face(scale=0.3)}, QualityReason.SMALL_FACE),
        ({"face": _face(_rotated(FRONTAL, 60.0))}, QualityReason.EXTREME_POSE),
        ({"face": _face(score=0.55)}, QualityReason.LOW_DETECTION_SCORE),
    ],
)
def test_each_problem_gives_its_reason_and_a_low_level(change, reason):
    quality = assess_quality(change.get("face", _face()), change.get("crop", _crop()), 20.0)
    assert reason in quality.reasons
    assert quality.level is QualityLevel.LOW


def test_the_embedding_norm_is_checked_only_with_a_limit():
    from service.faces.quality import QualityLimits

    assert assess_quality(_face(), _crop(), 2.0).reasons == ()
    limits = QualityLimits(embedding_norm_low=10.0, embedding_norm_medium=10.0)
    quality = assess_quality(_face(), _crop(), 2.0, limits)
    assert quality.reasons == (QualityReason.LOW_EMBEDDING_NORM,)


def test_sharpness_falls_as_blur_grows():
    crop = _crop()
    values = [sharpness_of(cv2.GaussianBlur(crop, (0, 0), s)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values, reverse=True) and sharpness_of(crop) > values[0]


def test_require_quality_refuses_below_the_minimum_with_the_reasons():
    low = assess_quality(_face(), np.full((112, 112, 3), 250, np.uint8), 20.0)
    require_quality(low, None, "x")
    require_quality(low, QualityLevel.LOW, "x")
    with pytest.raises(ServiceError) as refused:
        require_quality(low, QualityLevel.MEDIUM, "enrolment")
    assert refused.value.code == "low_quality" and "overexposed" in refused.value.message


# --- real photos ---------------------------------------------------------------------------

PHOTOS = ("deepface/id01/img1.jpg", "face_recognition/obama/obama.jpg")


@pytest.fixture(scope="module")
def pipeline(real_pack_dir: Path):
    from service.faces.pipeline import FacePipeline, PipelineOptions
    from service.packs import load_pack
    from service.runtime import RuntimeOptions

    pack = load_pack(real_pack_dir)
    return FacePipeline.from_pack(pack, PipelineOptions(), RuntimeOptions(providers="cpu"))


def _quality(pipeline, image: np.ndarray):
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    analyzed = pipeline.analyze(encoded.tobytes())
    assert analyzed.faces, "the degraded face should still be detected"
    return analyzed.faces[0]


# name → (degrade(image, face) for each strength, weakest first; the reason expected last)
SERIES = {
    "blur": (
        [lambda im, f, s=s: gaussian_blur(im, s, f.quality.inter_ocular_px) for s in (1, 2, 4)],
        QualityReason.BLURRY,
    ),
    "dark": ([lambda im, f, g=g: darken(im, g) for g in (0.5, 0.25, 0.15)], "underexposed"),
    "over": ([lambda im, f, g=g: over_expose(im, g) for g in (1.6, 2.0, 2.5)], "overexposed"),
    "downscale": (
        [lambda im, f, t=t: downscale(im, t, f.quality.inter_ocular_px) for t in (24, 16, 10)],
        QualityReason.SMALL_FACE,
    ),
    "rotation": ([lambda im, f, d=d: rotate(im, d) for d in (25, 45, 70)], "extreme_pose"),
    "half_face": (
        [lambda im, f, k=k: half_face(im, f.face.landmarks, k) for k in (0.9, 0.7, 0.5)],
        QualityReason.LOW_DETECTION_SCORE,
    ),
}


@pytest.mark.assets
@pytest.mark.slow
@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("series", sorted(SERIES))
def test_degradations_give_their_reason_and_levels_only_fall(pipeline, assets_dir, photo, series):
    image = cv2.imread(str(assets_dir / "images" / photo))
    clean = _quality(pipeline, image)
    assert clean.quality.level is QualityLevel.HIGH and clean.quality.reasons == ()
    steps, reason = SERIES[series]
    qualities = [_quality(pipeline, step(image, clean)).quality for step in steps]
    ranks = [QualityLevel.HIGH.rank] + [q.level.rank for q in qualities]
    assert ranks == sorted(ranks, reverse=True), [q.level for q in qualities]
    assert qualities[-1].level is QualityLevel.LOW
    assert reason in qualities[-1].reasons
    assert all(reason not in q.reasons for q in qualities[:1]), "the mildest step is usable"


@pytest.mark.assets
@pytest.mark.slow
def test_clean_shared_photos_are_never_low(pipeline, assets_dir):
    photos = sorted((assets_dir / "images" / "deepface").glob("id*/*.jpg"))
    levels = [pipeline.analyze(p.read_bytes()).faces[0].quality.level for p in photos]
    assert QualityLevel.LOW not in levels
    assert levels.count(QualityLevel.HIGH) >= 0.9 * len(levels)


# --- over HTTP ----------------------------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.mark.assets
def test_enrolment_refuses_a_blurred_photo_with_its_reasons_unless_the_policy_is_off(
    app_client, real_pack_dir, assets_dir, tmp_path
):
    image = cv2.imread(str(assets_dir / "images" / PHOTOS[1]))
    blurred = _png(gaussian_blur(image, 4, 107.0))
    files = {"image": ("b.png", blurred, "image/png")}
    with app_client(real_pack_dir, enrol_quality="medium") as client:
        identity = client.post("/identities", json={"name": "o"}).json()["id"]
        refused = client.post(f"/identities/{identity}/faces", files=files)
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "low_quality"
        assert "blurry" in refused.json()["error"]["message"]
        clean = {"image": ("c.png", _png(image), "image/png")}
        enrolled = client.post(f"/identities/{identity}/faces", files=clean)
        assert enrolled.status_code == 201
        assert enrolled.json()["quality"]["level"] == "high"
    with app_client(real_pack_dir, enrol_quality="off", data_dir=tmp_path / "d2") as client:
        identity = client.post("/identities", json={"name": "o"}).json()["id"]
        assert client.post(f"/identities/{identity}/faces", files=files).status_code == 201


@pytest.mark.assets
def test_verify_reports_quality_and_refuses_only_when_asked(app_client, real_pack_dir, assets_dir):
    image = cv2.imread(str(assets_dir / "images" / PHOTOS[1]))
    files = {
        "image1": ("a.png", _png(image), "image/png"),
        "image2": ("b.png", _png(darken(image, 0.15)), "image/png"),
    }
    with app_client(real_pack_dir) as client:
        answered = client.post("/verify", files=files)
        assert answered.status_code == 200, answered.text
        first, second = (face["quality"] for face in answered.json()["faces"])
        assert first["level"] == "high" and first["reasons"] == []
        assert second["level"] == "low" and "underexposed" in second["reasons"]
        assert {"yaw", "pitch", "roll", "sharpness", "brightness"} <= set(second)
        refused = client.post("/verify", files=files, data={"min_quality": "medium"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "low_quality"
        bad = client.post("/verify", files=files, data={"min_quality": "great"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


def test_identify_with_min_quality_skips_low_faces_or_refuses(app_client, tmp_path):
    pack = make_manifest_pack(
        tmp_path / "pack", [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)]
    )
    smooth = cv2.imencode(".png", np.full((640, 640, 3), 128, np.uint8))[1].tobytes()
    files = {"image": ("s.png", smooth, "image/png")}
    with app_client(pack) as client:
        assert client.post("/identify", files=files).status_code == 200
        refused = client.post("/identify", files=files, data={"min_quality": "low"})
        assert refused.status_code == 200
        refused = client.post("/identify", files=files, data={"min_quality": "medium"})
        assert refused.status_code == 422 and "blurry" in refused.json()["error"]["message"]
