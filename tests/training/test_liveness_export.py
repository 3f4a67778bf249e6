"""MiniFASNet rebuilt from its description: the published state_dicts load strictly, and the
ONNX export computes the same probabilities and lands in a pack the service loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from service.packs import load_pack
from training.__main__ import main as training_main
from training.liveness.minifasnet import (
    VARIANTS,
    CheckpointName,
    build_minifasnet,
    load_minifasnet,
    strip_data_parallel,
)

CHECKPOINTS = ("2.7_80x80_MiniFASNetV2.pth", "4_0_0_80x80_MiniFASNetV1SE.pth")


@pytest.fixture(scope="module")
def liveness_checkpoints(assets_dir: Path) -> list[Path]:
    folder = assets_dir / "models" / "minifasnet_liveness"
    paths = [folder / name for name in CHECKPOINTS]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        pytest.skip(f"MiniFASNet checkpoints not found in {folder}: {', '.join(missing)}")
    return paths


def test_checkpoint_name_gives_crop_scale_input_size_and_variant():
    assert CheckpointName.parse(Path("2.7_80x80_MiniFASNetV2.pth")) == CheckpointName(
        2.7, 80, "MiniFASNetV2"
    )
    assert CheckpointName.parse(Path("4_0_0_80x80_MiniFASNetV1SE.pth")).scale == 4.0
    with pytest.raises(ValueError, match="not named like"):
        CheckpointName.parse(Path("model.pth"))


def test_strip_data_parallel_removes_only_the_leading_module_prefix():
    state = {"module.conv1.conv.weight": 1, "prob.weight": 2, "module.module.x": 3}
    assert list(strip_data_parallel(state)) == ["conv1.conv.weight", "prob.weight", "module.x"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_maps_80x80_crops_to_three_logits(variant):
    model = build_minifasnet(variant).eval()
    with torch.no_grad():
        logits = model(torch.rand(3, 3, 80, 80) * 255)
    assert logits.shape == (3, 3)


def test_published_checkpoints_load_strictly(liveness_checkpoints):
    for path in liveness_checkpoints:
        model, name = load_minifasnet(path)  # strict=True: any missing or extra key raises
        state = strip_data_parallel(torch.load(path, map_location="cpu", weights_only=True))
        assert set(model.state_dict()) == set(state)
        assert name.input_size == 80
    # The SE variant has gates the V2 lacks; the widths differ where pruning left them so.
    se_model, _ = load_minifasnet(liveness_checkpoints[1])
    assert any("se_module" in key for key in se_model.state_dict())


def test_export_liveness_writes_parity_checked_models_into_a_loadable_pack(
    liveness_checkpoints, assets_dir, real_pack_dir, tmp_path, capsys
):
    from training.liveness.export import PARITY_TOLERANCE, centre_crops, export_liveness

    pack = tmp_path / "pack"
    pack.mkdir()
    for model in real_pack_dir.glob("*.onnx"):
        shutil.copyfile(model, pack / model.name)
    result = export_liveness(
        liveness_checkpoints, pack, crops=centre_crops(assets_dir / "images" / "deepface", limit=6)
    )
    assert set(result.max_abs_diff) == {
        "liveness_MiniFASNetV2.onnx",
        "liveness_MiniFASNetV1SE.onnx",
    }
    assert all(diff < PARITY_TOLERANCE for diff in result.max_abs_diff.values())

    loaded = load_pack(pack)
    liveness = loaded.manifest.liveness
    assert liveness is not None and liveness.live_class == 1 and liveness.threshold == 0.5
    assert [m.scale for m in liveness.models] == [2.7, 4.0]
    assert {(m.input_size, m.color_order, m.mean, m.std) for m in liveness.models} == {
        (80, "BGR", 0.0, 1.0)
    }
    assert liveness.licence == "Apache-2.0"
    assert [path.name for path in loaded.liveness_paths] == [m.file for m in liveness.models]
    # The recognizer and detector are those of the folder, unchanged.
    assert loaded.manifest.recognizer.embedding_size == 128

    # The command line replaces the entry (here with one model) and reports parity.
    photos = assets_dir / "images" / "face_recognition" / "obama"
    argv = ["export-liveness", "--pack", str(pack), "--threshold", "0.6"]
    argv += ["--parity-images", str(photos)]
    assert training_main([*argv, str(liveness_checkpoints[0])]) == 0
    assert "parity" in capsys.readouterr().out
    replaced = load_pack(pack).manifest.liveness
    assert replaced.threshold == 0.6 and [m.variant for m in replaced.models] == ["MiniFASNetV2"]
