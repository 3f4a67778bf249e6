"""SCRFD letterbox and decoding: parity with insightface on real photos, exact geometry on
wide and tall images, and no failure at any aspect ratio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from synthetic_models import SyntheticFace, make_pack_folder
from testimages import encode, noise_image

from service.faces.detector import DetectorOptions, FaceDetector
from service.faces.images import decode_image
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.faces.scrfd import Letterbox, non_maximum_suppression
from service.packs import DetectorSpec, load_pack
from service.runtime import RuntimeOptions

DETECTOR_FILE = "det_500m.onnx"
# How far the detector's own landmarks move when the same face is shifted by a sub-pixel
# phase, in detector-input pixels: measured up to 2.0 on obama.jpg in 2000-8000 px canvases.
DETECTOR_JITTER_INPUT_PX = 2.5


@pytest.fixture(scope="module")
def real_detector(real_pack_dir: Path) -> FaceDetector:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(real_pack_dir / DETECTOR_FILE), options)
    return FaceDetector(session, DetectorSpec(file=DETECTOR_FILE), DetectorOptions())


def _photo(assets_dir: Path, relative: str) -> np.ndarray:
    return decode_image((assets_dir / "images" / relative).read_bytes())


@pytest.mark.parametrize(
    "width,height", [(910, 1137), (8000, 1137), (1137, 8000), (10000, 15), (15, 10000), (1, 1)]
)
def test_letterbox_keeps_aspect_and_never_collapses_a_side(width: int, height: int) -> None:
    box = Letterbox.fit(width, height, 640, 640)
    assert 1 <= box.resized_width <= 640 and 1 <= box.resized_height <= 640
    assert max(box.resized_width, box.resized_height) == 640
    assert box.apply(np.zeros((height, width, 3), np.uint8)).shape == (640, 640, 3)
    corner = box.to_image(np.array([[box.resized_width, box.resized_height]], np.float32))
    assert corner[0] == pytest.approx([width, height], rel=1e-6)


def test_real_detector_input_follows_the_image_aspect(real_detector) -> None:
    assert real_detector.fits_aspect
    assert real_detector.input_size_for(1382, 1868) == (480, 640)
    assert real_detector.input_size_for(8000, 1137) == (640, 96)
    assert real_detector.input_size_for(10000, 15) == (640, 32)
    assert real_detector.input_size_for(500, 500) == (640, 640)


def test_detector_with_fixed_size_outputs_keeps_the_square_input(tmp_path) -> None:
    pack = make_pack_folder(tmp_path / "pack", [SyntheticFace.from_box((10, 10, 60, 60))])
    session = ort.InferenceSession(str(load_pack(pack).detector_path))
    detector = FaceDetector(session, DetectorSpec(file="d.onnx"), DetectorOptions())
    assert not detector.fits_aspect
    assert detector.input_size_for(1382, 1868) == (640, 640)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert non_maximum_suppression(boxes, 0.4).tolist() == [0, 2]


@pytest.mark.assets
@pytest.mark.slow
def test_decoding_equals_insightface_scrfd_on_real_photos(real_detector, assets_dir) -> None:
    """Same scores, and the same boxes and landmarks in detector-input pixels (insightface maps
    back with one scale, so its image coordinates differ on the floored axis)."""
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    session = real_detector._session
    square = FaceDetector(
        session, DetectorSpec(file=DETECTOR_FILE), DetectorOptions(fit_aspect=False)
    )
    reference = scrfd.SCRFD(session=session, static_shape_sessions=False)
    reference.prepare(0, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
    photos = sorted((assets_dir / "images").glob("*/*/*.jp*g"))
    assert len(photos) > 60
    for path in photos:
        image = decode_image(path.read_bytes())
        ours = square.detect(image)
        boxes, keypoints = reference.detect(image, input_size=(640, 640))
        assert len(ours) == boxes.shape[0], path.name
        height, width = image.shape[:2]
        letterbox = Letterbox.fit(width, height, 640, 640)
        their_scale = letterbox.resized_height / height  # insightface: new height / height
        scales = np.array([letterbox.scale_x, letterbox.scale_y], np.float32)
        by_score = sorted(ours, key=lambda face: -face.score)
        for face, box, points in zip(by_score, boxes, keypoints, strict=True):
            assert face.score == pytest.approx(float(box[4]), abs=1e-6), path.name
            ours_input = face.landmarks * scales
            assert ours_input == pytest.approx(points * their_scale, abs=1e-2), path.name
            assert face.box * np.tile(scales, 2) == pytest.approx(box[:4] * their_scale, abs=1e-2)


@pytest.mark.assets
@pytest.mark.parametrize(
    "canvas_width,canvas_height,x,y",
    [(8000, 1137, 7000, 0), (4000, 1137, 3000, 0), (910, 8000, 0, 6800), (3000, 3000, 2000, 1500)],
)
def test_face_pasted_into_wide_or_tall_canvas_keeps_its_geometry(
    real_detector, assets_dir, canvas_width, canvas_height, x, y
) -> None:
    face = _photo(assets_dir, "face_recognition/obama/obama.jpg")
    height, width = face.shape[:2]
    original = real_detector.detect(face)[0]
    canvas = np.full((canvas_height, canvas_width, 3), 128, np.uint8)
    canvas[y : y + height, x : x + width] = face
    found = real_detector.detect(canvas)[0]
    scale = min(640 / canvas_width, 640 / canvas_height)
    tolerance = 1.0 + DETECTOR_JITTER_INPUT_PX / scale
    assert np.abs(found.landmarks - original.landmarks - [x, y]).max() <= tolerance
    assert np.abs(found.box - original.box - [x, y, x, y]).max() <= tolerance


@pytest.mark.assets
def test_face_far_right_in_wide_canvas_still_matches_itself(real_pack_dir, assets_dir) -> None:
    pipeline = FacePipeline.from_pack(
        load_pack(real_pack_dir), PipelineOptions(), RuntimeOptions(intra_op_threads=1)
    )
    path = assets_dir / "images/face_recognition/obama/obama.jpg"
    face = decode_image(path.read_bytes())
    canvas = np.full((1137, 8000, 3), 128, np.uint8)
    canvas[:, 7000 : 7000 + face.shape[1]] = face
    original = pipeline.analyze(path.read_bytes()).faces[0].embedding
    shifted = pipeline.analyze(encode(canvas, ".jpg")).faces[0].embedding
    assert float(original @ shifted) >= 0.95


@pytest.mark.parametrize("size", [(10000, 15), (15, 10000), (6000, 3)])
def test_extreme_aspect_ratio_is_answered_not_crashed(app_client, tmp_path, size) -> None:
    pack = make_pack_folder(tmp_path / "pack", [SyntheticFace.from_box((10, 10, 60, 60))])
    image = noise_image(seed=4)[:1, :1].repeat(size[1], axis=0).repeat(size[0], axis=1)
    with app_client(pack) as client:
        response = client.post("/detect", files={"image": ("wide.png", encode(image), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["width"] == size[0]


def test_service_detects_without_insightface_installed(tmp_path) -> None:
    """`pip install .` gives no insightface: the pipeline must not need it."""
    pack = make_pack_folder(tmp_path / "pack", [SyntheticFace.from_box((100, 120, 340, 400))])
    script = f"""
import sys
sys.modules["insightface"] = None  # any import of it now fails
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions
from testimages import encode, noise_image
pipeline = FacePipeline.from_pack(load_pack({str(pack)!r}), PipelineOptions(), RuntimeOptions())
print(len(pipeline.detect(encode(noise_image())).faces))
"""
    tests_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
