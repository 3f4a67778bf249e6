"""The pack tool that gives an SCRFD detector a dynamic batch axis keeps its answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from synthetic_models import make_recognizer

from service.cli import main
from service.faces.detector import DetectorOptions, FaceDetector
from service.packs import DetectorSpec
from service.packtools.batch_axis import add_batch_axis


@pytest.mark.assets
def test_batched_real_detector_equals_batch_one_on_real_photos(
    real_pack_dir, assets_dir, tmp_path, capsys
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((assets_dir / "images" / "face_recognition").glob("*/*.jpg"))[:8]:
        (photos / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    target = tmp_path / "det_batched.onnx"
    code = main(
        [
            "batch-detector",
            str(real_pack_dir / "det_500m.onnx"),
            str(target),
            "--photos",
            str(photos),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "batched outputs equal" in capsys.readouterr().out
    session = ort.InferenceSession(str(target))
    assert session.get_inputs()[0].shape[0] == "batch"
    outputs = session.run(None, {"input.1": np.zeros((3, 3, 640, 640), np.float32)})
    assert [o.shape[:2] for o in outputs[:3]] == [(3, 12800), (3, 3200), (3, 800)]
    detector = FaceDetector(session, DetectorSpec(file=target.name), DetectorOptions())
    assert detector.batches_images


def test_a_model_that_is_not_scrfd_is_refused(tmp_path) -> None:
    model = make_recognizer(tmp_path / "rec.onnx", 8)
    with pytest.raises(ValueError, match="not an SCRFD detector"):
        add_batch_axis(Path(model), tmp_path / "out.onnx")
