"""The synthetic models keep their promises: insightface's own SCRFD decoder reads the
synthetic detector's outputs back as the requested faces, and the synthetic recognizer is a
deterministic, batchable function of the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from insightface.model_zoo.scrfd import SCRFD
from synthetic_models import (
    SyntheticFace,
    make_detector,
    make_recognizer,
    recognizer_projection,
)

MAX_MODEL_BYTES = 50_000
FACES = [
    SyntheticFace.from_box((100.5, 120.25, 260.0, 300.75), score=0.95),
    SyntheticFace.from_box((400.0, 50.0, 480.0, 150.0), score=0.7),
    SyntheticFace(
        box=(20.0, 500.0, 90.0, 600.0),
        landmarks=((40.0, 530.0), (70.0, 531.0), (55.0, 550.0), (42.0, 575.0), (68.0, 576.0)),
        score=0.55,
    ),
]


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def scrfd_detect(path: Path, det_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    detector = SCRFD(session=session(path))
    detector.prepare(-1, input_size=(640, 640), det_thresh=det_thresh)
    image = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    boxes, keypoints = detector.detect(image, input_size=(640, 640))
    order = np.argsort(-boxes[:, 4])
    return boxes[order], keypoints[order]


def test_insightface_scrfd_decodes_the_requested_faces(tmp_path: Path) -> None:
    boxes, keypoints = scrfd_detect(make_detector(tmp_path / "det.onnx", FACES))

    assert boxes.shape == (3, 5)
    for face, box, points in zip(FACES, boxes, keypoints, strict=True):
        np.testing.assert_allclose(box[:4], face.box, atol=1e-3)
        assert box[4] == pytest.approx(face.score, abs=1e-6)
        np.testing.assert_allclose(points, np.array(face.landmarks), atol=1e-3)


def test_faces_centred_in_the_same_cell_are_both_reported(tmp_path: Path) -> None:
    big = SyntheticFace.from_box((100.0, 100.0, 300.0, 300.0), score=0.9)
    small = SyntheticFace.from_box((195.0, 195.0, 205.0, 205.0), score=0.8)

    boxes, _ = scrfd_detect(make_detector(tmp_path / "det.onnx", [big, small]))

    np.testing.assert_allclose(boxes[:, :4], [big.box, small.box], atol=1e-3)


def test_faces_below_the_detection_threshold_are_not_reported(tmp_path: Path) -> None:
    faint = SyntheticFace.from_box((300.0, 300.0, 400.0, 420.0), score=0.3)

    boxes, _ = scrfd_detect(make_detector(tmp_path / "det.onnx", [FACES[0], faint]))

    np.testing.assert_allclose(boxes[:, :4], [FACES[0].box], atol=1e-3)


def test_detector_without_faces_reports_none(tmp_path: Path) -> None:
    boxes, _ = scrfd_detect(make_detector(tmp_path / "det.onnx", []))
    assert boxes.shape[0] == 0


def test_detector_is_small_and_shaped_like_scrfd_with_keypoints(tmp_path: Path) -> None:
    path = make_detector(tmp_path / "det.onnx", FACES)
    outputs = session(path).run(None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})

    assert path.stat().st_size < MAX_MODEL_BYTES
    assert [o.shape for o in outputs] == [
        (12800, 1), (3200, 1), (800, 1),
        (12800, 4), (3200, 4), (800, 4),
        (12800, 10), (3200, 10), (800, 10),
    ]  # fmt: skip
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.name == "input.1"
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [
        1, 3, "?", "?",
    ]  # fmt: skip


def test_detector_without_keypoints_has_six_outputs(tmp_path: Path) -> None:
    path = make_detector(tmp_path / "det.onnx", FACES, with_keypoints=False)
    assert len(session(path).get_outputs()) == 6


def test_synthetic_face_needs_five_landmarks() -> None:
    with pytest.raises(ValueError, match="5 landmarks"):
        SyntheticFace(box=(0, 0, 10, 10), landmarks=((1.0, 1.0),) * 4)


def crops(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, 3, 112, 112)).astype(np.float32)


def test_recognizer_output_shape_and_dynamic_batch(tmp_path: Path) -> None:
    path = make_recognizer(tmp_path / "rec.onnx", embedding_size=16)
    run = session(path)

    assert run.run(None, {"input": crops(1, 0)})[0].shape == (1, 16)
    assert run.run(None, {"input": crops(5, 0)})[0].shape == (5, 16)
    assert path.stat().st_size < MAX_MODEL_BYTES


def test_recognizer_is_a_deterministic_function_of_the_crop(tmp_path: Path) -> None:
    run = session(make_recognizer(tmp_path / "rec.onnx", embedding_size=8))
    batch = crops(3, 1)

    first = run.run(None, {"input": batch})[0]
    again = run.run(None, {"input": batch[::-1].copy()})[0][::-1]

    np.testing.assert_allclose(first, again, rtol=1e-5)
    pooled = batch.reshape(3, 3, 4, 28, 4, 28).mean(axis=(3, 5)).reshape(3, 48)
    np.testing.assert_allclose(first, pooled @ recognizer_projection(8), rtol=1e-4, atol=1e-3)


def test_recognizer_gives_different_crops_different_embeddings(tmp_path: Path) -> None:
    run = session(make_recognizer(tmp_path / "rec.onnx", embedding_size=8))
    normalised = (crops(2, 2) - 127.5) / 127.5  # what the pipeline feeds (mean/std 127.5)
    a, b = run.run(None, {"input": normalised})[0]

    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine < 0.9


def test_recognizer_with_fixed_batch_declares_batch_one(tmp_path: Path) -> None:
    path = make_recognizer(tmp_path / "rec.onnx", dynamic_batch=False, input_size=128)
    (graph_input,) = session(path).get_inputs()
    assert graph_input.shape == [1, 3, 128, 128]


def test_recognizer_with_normalisation_in_graph_takes_raw_pixels(tmp_path: Path) -> None:
    plain = session(make_recognizer(tmp_path / "plain.onnx"))
    inside = session(make_recognizer(tmp_path / "inside.onnx", normalisation_in_graph=True))
    raw = crops(2, 3)

    expected = plain.run(None, {"input": (raw - 127.5) / 127.5})[0]
    np.testing.assert_allclose(inside.run(None, {"input": raw})[0], expected, rtol=1e-4, atol=1e-5)
