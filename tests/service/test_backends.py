"""Faster CPU back-ends stay options: the graph optimisation level is a setting, and an INT8
recognizer pack is only written when it decides as the FP32 one does."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError
from synthetic_models import SyntheticFace, make_manifest_pack, make_recognizer

from service.cli import main
from service.packs import load_pack
from service.packtools import quantize
from service.runtime import RuntimeOptions, create_session
from service.settings import Settings

FACES = [
    SyntheticFace.from_box((120.0, 140.0, 320.0, 360.0)),
    SyntheticFace.from_box((380.0, 160.0, 540.0, 330.0)),
]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("disabled", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_sessions_open_at_the_chosen_graph_optimisation_level(tmp_path, level, expected):
    model = make_recognizer(tmp_path / "rec.onnx")
    session = create_session(model, RuntimeOptions(providers="cpu", graph_optimization=level))
    assert session.get_session_options().graph_optimization_level == expected


def test_graph_optimisation_setting_defaults_to_onnxruntimes_and_reaches_the_app(
    tmp_path, monkeypatch, app_client, opened_runtimes
):
    assert Settings(_env_file=None).graph_optimization == "all"
    monkeypatch.setenv("FACEVERIFY_GRAPH_OPTIMIZATION", "bogus")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
    monkeypatch.delenv("FACEVERIFY_GRAPH_OPTIMIZATION")
    with app_client(make_manifest_pack(tmp_path / "pack"), graph_optimization="basic") as client:
        assert client.get("/readyz").status_code == 200
    assert [runtime.graph_optimization for runtime in opened_runtimes] == ["basic"]


def _photos(directory: Path, count: int = 6) -> Path:
    """Smooth random photos: the synthetic detector reports FACES on each, and their crops
    differ from photo to photo."""
    directory.mkdir()
    rng = np.random.default_rng(7)
    for index in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (640, 640), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(directory / f"photo{index}.jpg"), image)
    return directory


def _quantize(source: Path, target: Path, photos: Path, *options: str) -> int:
    command = ["quantize-recognizer", str(source), str(target), "--photos", str(photos)]
    return main([*command, *options])


def test_a_quantised_pack_that_passes_parity_is_written_and_served(
    tmp_path, capsys, app_client, monkeypatch
):
    # The synthetic recognizer (a random projection of pooled pixels) loses up to 0.03 cosine
    # on its worst crop in INT8; this test is about writing and serving, so it lowers the bar.
    monkeypatch.setattr(quantize, "COSINE_FLOOR", 0.9)
    source = make_manifest_pack(tmp_path / "pack", FACES, embedding_size=16)
    target = tmp_path / "int8"
    code = _quantize(source, target, _photos(tmp_path / "photos"), "--fp32-head", "0")
    assert code == 0, capsys.readouterr().err
    assert "passes parity: 12 faces" in capsys.readouterr().out
    pack = load_pack(target)
    assert pack.name == "synthetic-int8"
    assert pack.recognizer_path.name == "arcface_synthetic_int8.onnx"
    assert pack.manifest.threshold == load_pack(source).manifest.threshold
    ops = {node.op_type for node in onnx.load(str(pack.recognizer_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "pack", "photos"]
    with app_client(target) as client:
        assert client.get("/readyz").status_code == 200


def test_a_quantised_recognizer_that_fails_parity_is_refused_and_nothing_is_written(
    tmp_path, capsys, monkeypatch
):
    source = make_manifest_pack(tmp_path / "pack", FACES, embedding_size=16)
    monkeypatch.setattr(quantize, "COSINE_FLOOR", 1.01)  # no INT8 embedding can reach it
    target = tmp_path / "int8"
    assert _quantize(source, target, _photos(tmp_path / "photos"), "--fp32-head", "0") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "refused, it fails parity: 12 faces: cosine FP32/INT8 min" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack", "photos"]


def test_quantising_into_a_folder_that_holds_files_is_refused(tmp_path, capsys):
    source = make_manifest_pack(tmp_path / "pack", FACES)
    target = tmp_path / "int8"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert _quantize(source, target, _photos(tmp_path / "photos", 2)) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.assets
def test_int8_recognizer_of_the_real_pack_is_written_only_if_it_passes_parity(
    real_pack_dir, assets_dir, tmp_path, capsys, app_client
):
    """On the deepface photos and master.csv pairs, the tool's verdict agrees with the figures
    it prints, and a written pack serves /verify with the FP32 pack's answer (measured: min
    cosine 0.9916, 0 of 300 decisions changed, so it is written)."""
    deepface = assets_dir / "images" / "deepface"
    target = tmp_path / "int8"
    code = _quantize(real_pack_dir, target, deepface, "--pairs", str(deepface / "master.csv"))
    out, err = capsys.readouterr()
    found = re.search(
        r"(\d+) faces: cosine FP32/INT8 min ([\d.]+) .* (\d+) of (\d+) pair", out + err
    )
    assert found, out + err
    faces, worst, changed, pairs = int(found[1]), float(found[2]), int(found[3]), int(found[4])
    assert faces >= 61 and pairs == 300, "every deepface photo has a face, every pair is checked"
    if worst < quantize.COSINE_FLOOR or changed:
        assert code == 2 and "fails parity" in err
        assert not target.exists()
        return
    assert code == 0, err
    assert load_pack(target).recognizer_path.name == "mobilefacenet_128d_int8.onnx"
    same = (deepface / "id01" / "img1.jpg", deepface / "id01" / "img2.jpg")
    answers = []
    for pack_dir in (real_pack_dir, target):
        with app_client(pack_dir, data_dir=tmp_path / f"data-{pack_dir.name}") as client:
            files = {f"image{i + 1}": (p.name, p.read_bytes()) for i, p in enumerate(same)}
            response = client.post("/verify", files=files)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    assert answers[1]["match"] == answers[0]["match"] is True
    assert answers[1]["similarity"] == pytest.approx(answers[0]["similarity"], abs=0.02)
