"""Export: a trained checkpoint becomes an ONNX recognizer with a dynamic batch axis, checked
against PyTorch, packed with a detector and a manifest, and served by the service."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from synthetic_models import SyntheticFace, make_detector

from service.faces.alignment import align_face
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import DEFAULT_THRESHOLD, MANIFEST_NAME, PackManifest, load_pack, sha256_file
from service.runtime import RuntimeOptions
from training.__main__ import main
from training.checkpoint import load_backbone
from training.config import load_config
from training.data import SyntheticFaceDataset
from training.evaluate import (
    OnnxEmbedder,
    TorchEmbedder,
    VerificationResult,
    evaluate_set,
    load_verification_set,
    verification_result,
)
from training.export import ParityError, check_parity, choose_threshold, export_pack
from training.trainer import Trainer

FACE_BOX = (200.0, 160.0, 424.0, 384.0)  # where the synthetic detector reports the face
TARGET_FAR = 0.01  # the synthetic evaluation set has 100 mismatched pairs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few training steps of the smoke config at 112 px (the size packs are served at)."""
    run = tmp_path_factory.mktemp("run")
    config = load_config(
        "synthetic_smoke",
        [f"output_dir={run}", "max_steps=3", "eval_sets=()", "checkpoint_every=100"],
    )
    Trainer(config).fit()
    return run


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("detector")
    return make_detector(folder / "det_synthetic.onnx", [SyntheticFace.from_box(FACE_BOX)])


@pytest.fixture(scope="module")
def pack(trained_run: Path, detector: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pack written by `python -m training export`."""
    pack_dir = tmp_path_factory.mktemp("packs") / "smoke_pack"
    code = main(
        [
            "export", "--checkpoint", str(trained_run), "--detector", str(detector),
            "--out", str(pack_dir), "--eval", "synthetic", "--target-far", str(TARGET_FAR),
        ]
    )  # fmt: skip
    assert code == 0
    return pack_dir


def test_pack_manifest_describes_the_model_and_its_training(pack: Path, detector: Path) -> None:
    manifest = PackManifest.model_validate_json((pack / MANIFEST_NAME).read_text())
    assert manifest.name == "smoke_pack"
    recognizer = manifest.recognizer
    assert (recognizer.input_size, recognizer.color_order) == (112, "RGB")
    assert (recognizer.mean, recognizer.std, recognizer.embedding_size) == (127.5, 127.5, 64)
    assert recognizer.sha256 == sha256_file(pack / recognizer.file)
    assert manifest.detector.file == detector.name
    assert manifest.detector.sha256 == sha256_file(detector)
    training = manifest.training
    assert training is not None
    assert training["backbone"] == "r18" and training["head"] == "arcface"
    assert training["margins"] == {"head": "arcface", "s": 16.0, "m": 0.3, "easy_margin": False}
    assert training["target_far"] == TARGET_FAR
    measured = training["evaluation"][0]["threshold_at_target_far"]
    assert manifest.threshold == pytest.approx(measured, abs=1e-6)
    assert training["onnx_max_abs_diff"] <= 1e-3


def flip_and_plain_results(pack: Path) -> tuple[VerificationResult, VerificationResult]:
    embedder = OnnxEmbedder.from_pack(pack)
    unseen = load_verification_set("synthetic")
    plain = evaluate_set(embedder, unseen, flip=False, target_far=TARGET_FAR)
    flipped = evaluate_set(embedder, unseen, flip=True, target_far=TARGET_FAR)
    assert plain.threshold_at_target_far != flipped.threshold_at_target_far
    return plain, flipped


def assert_thresholds(
    manifest: PackManifest, plain: VerificationResult, flipped: VerificationResult
) -> None:
    training = manifest.training
    assert training is not None and training["threshold_flip_test"] is False
    assert manifest.threshold == pytest.approx(plain.threshold_at_target_far, abs=1e-5)
    assert training["threshold_with_flip_test"] == pytest.approx(
        flipped.threshold_at_target_far, abs=1e-5
    )


def test_pack_records_the_threshold_without_and_with_flip_test(pack: Path) -> None:
    """The service embeds without flip-test by default (FACEVERIFY_FLIP): `threshold` is
    measured so; the flip-test threshold is recorded beside it."""
    plain, flipped = flip_and_plain_results(pack)
    assert_thresholds(
        PackManifest.model_validate_json((pack / MANIFEST_NAME).read_text()), plain, flipped
    )


@pytest.mark.slow
def test_export_with_flip_still_calibrates_the_pack_threshold_without_flip_test(
    pack: Path, trained_run: Path, detector: Path, tmp_path: Path
) -> None:
    plain, flipped = flip_and_plain_results(pack)
    result = export_pack(
        trained_run, tmp_path / "flip", detector, eval_sets=["synthetic"], target_far=TARGET_FAR,
        flip=True,
    )  # fmt: skip
    assert_thresholds(result.manifest, plain, flipped)
    assert result.manifest.training["flip_test"] is True  # the evaluation reported
    assert result.evaluation[0].flip
    assert result.evaluation[0].accuracy == pytest.approx(flipped.accuracy)


def test_exported_recognizer_has_a_dynamic_batch_axis(pack: Path) -> None:
    session = ort.InferenceSession(
        str(pack / "recognizer.onnx"), providers=["CPUExecutionProvider"]
    )
    assert isinstance(session.get_inputs()[0].shape[0], str)
    for batch in (1, 5):
        images = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 112, 112))
        output = session.run(None, {"input": images.astype(np.float32)})[0]
        assert output.shape == (batch, 64)


def test_insightface_arcface_onnx_loads_the_export_and_matches_pytorch(
    pack: Path, trained_run: Path
) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = ArcFaceONNX(model_file=str(pack / "recognizer.onnx"))
    assert (model.input_mean, model.input_std) == (127.5, 127.5)  # no in-graph normalisation
    crops = [SyntheticFaceDataset(4, 1, seed=9).load(i)[0] for i in range(4)]
    theirs = torch.from_numpy(model.get_feat(crops))
    backbone, _ = load_backbone(trained_run)
    ours = torch.from_numpy(TorchEmbedder(backbone)(np.stack(crops)))
    cosine = torch.nn.functional.cosine_similarity(theirs, ours)
    assert bool((cosine > 0.9999).all()), cosine


def test_the_service_embeds_a_face_with_the_exported_pack(pack: Path, trained_run: Path) -> None:
    loaded = load_pack(pack)
    pipeline = FacePipeline.from_pack(loaded, PipelineOptions(), RuntimeOptions(providers="cpu"))
    photo = np.full((640, 640, 3), 90, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in FACE_BOX)
    face = SyntheticFaceDataset(1, 1, seed=3).load(0)[0]
    photo[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    analyzed = pipeline.analyze(cv2.imencode(".png", photo)[1].tobytes())
    assert len(analyzed.faces) == 1
    embedded = analyzed.faces[0]
    assert embedded.embedding.shape == (64,)
    assert np.linalg.norm(embedded.embedding) == pytest.approx(1.0, abs=1e-5)
    crop = align_face(photo, embedded.face.landmarks, 112)
    backbone, _ = load_backbone(trained_run)
    expected = torch.nn.functional.normalize(
        torch.from_numpy(TorchEmbedder(backbone)(crop[None])), dim=1
    )[0].numpy()
    assert float(embedded.embedding @ expected) > 0.9999


def test_evaluating_the_pack_and_the_checkpoint_agree(
    pack: Path, trained_run: Path, tmp_path: Path
) -> None:
    for source, output in (("--pack", pack), ("--checkpoint", trained_run)):
        code = main(
            [
                "evaluate", source, str(output), "--eval", "synthetic",
                "--json", str(tmp_path / f"{source[2:]}.json"),
                "--roc", str(tmp_path / f"{source[2:]}.png"),
            ]
        )  # fmt: skip
        assert code == 0
    from_pack, from_checkpoint = (
        json.loads((tmp_path / f"{name}.json").read_text())[0] for name in ("pack", "checkpoint")
    )
    assert from_pack["accuracy"] == pytest.approx(from_checkpoint["accuracy"], abs=0.01)
    assert (tmp_path / "pack.png").stat().st_size > 0


def test_parity_check_fails_loudly_for_a_model_that_differs(pack: Path, trained_run: Path) -> None:
    backbone, _ = load_backbone(trained_run)
    assert check_parity(backbone, pack / "recognizer.onnx") <= 1e-3
    with torch.no_grad():
        backbone.fc.bias.add_(0.01)
    with pytest.raises(ParityError, match="differ by up to"):
        check_parity(backbone, pack / "recognizer.onnx")


def test_threshold_is_given_else_measured_else_the_service_default() -> None:
    enough = verification_result(
        "set", np.linspace(-0.5, 0.9, 200), np.arange(200) >= 100, target_far=TARGET_FAR
    )
    assert choose_threshold(0.42, [enough], TARGET_FAR) == (0.42, "given on the command line")
    value, how = choose_threshold(None, [enough], TARGET_FAR)
    assert value == pytest.approx(enough.threshold_at_target_far) and "FAR 0.01" in how
    too_few = verification_result("tiny", np.array([0.9, 0.1]), np.array([True, False]))
    assert choose_threshold(None, [too_few], 1e-3)[0] == DEFAULT_THRESHOLD
    assert choose_threshold(None, [], 1e-3) == (
        DEFAULT_THRESHOLD,
        "service default (no evaluation set)",
    )


def test_export_without_a_detector_stops_before_exporting(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        [
            "export", "--checkpoint", str(trained_run), "--detector", str(tmp_path / "none.onnx"),
            "--out", str(tmp_path / "pack"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "det_10g.onnx" in capsys.readouterr().err
    assert not (tmp_path / "pack").exists()
