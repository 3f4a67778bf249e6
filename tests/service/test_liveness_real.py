"""The real MiniFASNet models through the service: `require` refuses the source repository's
attack samples and accepts its live one, and shared live photos pass.

Needs the shared checkpoints (exported here once per module) and the source's sample photos in
FACEVERIFY_LIVENESS_SAMPLES (a folder with `attacks/image_F1.jpg`, `attacks/image_F2.jpg` and
`live/image_T1.jpg` from minivision-ai/Silent-Face-Anti-Spoofing `images/sample/`); skips with
the reason when either is absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHECKPOINTS = ("2.7_80x80_MiniFASNetV2.pth", "4_0_0_80x80_MiniFASNetV1SE.pth")
SAMPLES = {"attacks": ("image_F1.jpg", "image_F2.jpg"), "live": ("image_T1.jpg",)}


@pytest.fixture(scope="module")
def samples_dir() -> Path:
    folder = os.environ.get("FACEVERIFY_LIVENESS_SAMPLES")
    if not folder:
        pytest.skip("FACEVERIFY_LIVENESS_SAMPLES is not set (the source's sample photos)")
    root = Path(folder)
    missing = [f"{kind}/{name}" for kind, names in SAMPLES.items() for name in names]
    missing = [name for name in missing if not (root / name).is_file()]
    if missing:
        pytest.skip(f"liveness samples missing in {root}: {', '.join(missing)}")
    return root


@pytest.fixture(scope="module")
def real_liveness_pack(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.liveness.export import export_liveness

    checkpoints = [assets_dir / "models" / "minifasnet_liveness" / name for name in CHECKPOINTS]
    recognition = assets_dir / "models" / "scrfd500m_mbf128"
    if not all(path.is_file() for path in checkpoints) or not recognition.is_dir():
        pytest.skip(f"liveness checkpoints or the real pack not found under {assets_dir}")
    pack = tmp_path_factory.mktemp("real_liveness_pack")
    for model in recognition.glob("*.onnx"):
        shutil.copyfile(model, pack / model.name)
    export_liveness(checkpoints, pack)
    return pack


def _upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


def test_require_refuses_the_source_attacks_and_accepts_its_live_sample(
    app_client, real_liveness_pack, samples_dir
):
    with app_client(real_liveness_pack, liveness="require") as client:
        answers = {
            name: client.post("/embed", files=_upload(samples_dir / kind / name))
            for kind, names in SAMPLES.items()
            for name in names
        }
    for name in SAMPLES["attacks"]:
        assert answers[name].status_code == 422, answers[name].text
        assert answers[name].json()["error"]["code"] == "liveness_failed"
    live = answers["image_T1.jpg"]
    assert live.status_code == 200, live.text
    assert live.json()["faces"][0]["liveness"]["score"] > 0.9


def test_shared_live_photos_pass_in_report_mode(app_client, real_liveness_pack, assets_dir):
    # Photos the benchmark scores far above the threshold (bench/liveness.py, docs/liveness.md).
    photos = [
        assets_dir / "images" / "face_recognition" / "obama" / "obama.jpg",
        assets_dir / "images" / "deepface" / "id01" / "img1.jpg",
    ]
    with app_client(real_liveness_pack, liveness="report") as client:
        for photo in photos:
            body = client.post("/embed", files=_upload(photo)).json()
            assert body["faces"][0]["liveness"]["live"] is True, (photo.name, body)
