"""Passive liveness in the service: the crop rule, packs with and without liveness models, and
the `liveness` option of every face route on tiny synthetic models (a bright photo reads as
live, a dark one as an attack; see tests/synthetic_liveness.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_liveness import add_liveness_models, live_probability
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

import service.faces.pipeline as pipeline_module
from service.errors import PackError
from service.faces.liveness import liveness_box, liveness_crop
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import MANIFEST_NAME, load_pack
from service.runtime import RuntimeOptions

FACE = SyntheticFace.from_box((200.0, 200.0, 400.0, 440.0), score=0.9)
BRIGHT, DARK = 220, 40


def _photo(level: int) -> bytes:
    return encode(np.full((640, 640, 3), level, np.uint8))


def _files(**images: bytes) -> dict:
    return {name: (f"{name}.png", data, "image/png") for name, data in images.items()}


def _code(response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture
def liveness_pack(tmp_path: Path) -> Path:
    return add_liveness_models(make_manifest_pack(tmp_path / "pack", [FACE], threshold=0.5))


@pytest.fixture
def plain_pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "plain", [FACE], threshold=0.5)


# --- crop rule ----------------------------------------------------------------------------


def test_liveness_box_enlarges_the_face_box_about_its_centre():
    # 100 px box centred at 150: 2.7 x 100 = 270 px, from 15 to 285.
    box = np.array([100, 100, 200, 200], np.float32)
    assert liveness_box(box, 2.7, 1000, 1000) == (15, 15, 285, 285)


def test_liveness_box_is_shifted_inside_the_image_not_cut():
    # Near the top-left corner the crop keeps its 270 px side and moves right/down.
    box = np.array([0, 0, 100, 100], np.float32)
    assert liveness_box(box, 2.7, 1000, 1000) == (0, 0, 270, 270)
    # Near the bottom-right corner it moves left/up to end at the last pixel.
    box = np.array([900, 900, 1000, 1000], np.float32)
    assert liveness_box(box, 2.7, 1000, 1000) == (729, 729, 999, 999)


def test_liveness_box_shrinks_the_scale_when_the_image_cannot_hold_it():
    box = np.array([100, 100, 300, 300], np.float32)  # 4 x 200 = 800 > 500
    left, top, right, bottom = liveness_box(box, 4.0, 500, 500)
    assert (left, top, right, bottom) == (0, 0, 499, 499)


def test_liveness_crop_is_the_model_input_size_in_bgr():
    image = np.zeros((300, 400, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    crop = liveness_crop(image, np.array([150, 100, 250, 200], np.float32), 2.7, 80)
    assert crop.shape == (80, 80, 3) and crop[..., 2].min() == 255 and crop[..., 0].max() == 0


@pytest.mark.parametrize(
    "box",
    [(-500, -500, -400, -400), (5000, 10, 5100, 90), (10, 10, 10, 10), (-50, -50, 400, 350)],
)
def test_liveness_crop_of_any_box_is_a_full_size_crop_from_inside_the_image(box):
    image = np.arange(300 * 400 * 3, dtype=np.uint32).astype(np.uint8).reshape(300, 400, 3)
    left, top, right, bottom = liveness_box(np.array(box, np.float32), 2.7, 400, 300)
    assert 0 <= left <= right <= 399 and 0 <= top <= bottom <= 299
    assert liveness_crop(image, np.array(box, np.float32), 2.7, 80).shape == (80, 80, 3)


# --- packs --------------------------------------------------------------------------------


def test_pack_without_liveness_loads_with_none(plain_pack):
    pack = load_pack(plain_pack)
    assert pack.manifest.liveness is None and pack.liveness_paths == ()


def test_pack_with_liveness_models_loads_them_in_manifest_order(liveness_pack):
    pack = load_pack(liveness_pack)
    assert [m.scale for m in pack.manifest.liveness.models] == [2.7, 4.0]
    assert [p.name for p in pack.liveness_paths] == ["liveness_0.onnx", "liveness_1.onnx"]


def test_pack_refuses_a_liveness_model_with_a_wrong_checksum(liveness_pack):
    (liveness_pack / "liveness_1.onnx").write_bytes(b"not the model")
    with pytest.raises(PackError, match="sha256"):
        load_pack(liveness_pack)


def test_pack_refuses_a_liveness_model_of_another_input_size(liveness_pack):
    manifest = json.loads((liveness_pack / MANIFEST_NAME).read_text())
    manifest["liveness"]["models"][0]["input_size"] = 112
    (liveness_pack / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="liveness model"):
        load_pack(liveness_pack)


# --- API ----------------------------------------------------------------------------------


def test_verify_with_liveness_reports_a_verdict_per_compared_face(app_client, liveness_pack):
    with app_client(liveness_pack) as client:
        response = client.post(
            "/verify",
            files=_files(image1=_photo(BRIGHT), image2=_photo(DARK)),
            data={"liveness": "true"},
        )
    assert response.status_code == 200, response.text
    first, second = (face["liveness"] for face in response.json()["faces"])
    assert first["live"] is True and second["live"] is False
    assert first["score"] == pytest.approx(live_probability(BRIGHT), abs=1e-3)
    assert second["score"] == pytest.approx(live_probability(DARK), abs=1e-3)
    assert first["threshold"] == 0.5
    assert first["model"].startswith("synthetic@") and "+" in first["model"]


def test_liveness_is_off_by_default(app_client, liveness_pack):
    with app_client(liveness_pack) as client:
        response = client.post("/verify", files=_files(image1=_photo(DARK), image2=_photo(DARK)))
    assert response.status_code == 200
    assert [face["liveness"] for face in response.json()["faces"]] == [None, None]


def test_report_setting_checks_by_default_and_a_request_may_skip_it(app_client, liveness_pack):
    with app_client(liveness_pack, liveness="report") as client:
        checked = client.post("/embed", files=_files(image=_photo(DARK)))
        skipped = client.post(
            "/embed", files=_files(image=_photo(DARK)), data={"liveness": "false"}
        )
    assert checked.status_code == 200 and checked.json()["faces"][0]["liveness"]["live"] is False
    assert skipped.json()["faces"][0]["liveness"] is None


def test_require_refuses_an_attack_on_every_route_and_counts_it(app_client, liveness_pack):
    with app_client(liveness_pack, liveness="require") as client:
        pair = client.post("/verify", files=_files(image1=_photo(BRIGHT), image2=_photo(DARK)))
        # A client cannot opt out of a required check.
        opted_out = client.post(
            "/verify",
            files=_files(image1=_photo(DARK), image2=_photo(BRIGHT)),
            data={"liveness": "false"},
        )
        embedded = client.post("/embed", files=_files(image=_photo(DARK)))
        identity = client.post("/identities", json={"name": "Ada"}).json()["id"]
        enrol = client.post(f"/identities/{identity}/faces", files=_files(image=_photo(DARK)))
        identify = client.post("/identify", files=_files(image=_photo(DARK)))
        metrics = client.get("/metrics").text
    for response in (pair, opted_out, embedded, enrol, identify):
        assert response.status_code == 422, response.text
        assert _code(response) == "liveness_failed"
    assert "faceverify_liveness_refusals_total 5.0" in metrics
    assert "faceverify_liveness_score_count" in metrics


def test_require_accepts_live_faces_on_every_route(app_client, liveness_pack):
    with app_client(liveness_pack, liveness="require") as client:
        pair = client.post("/verify", files=_files(image1=_photo(BRIGHT), image2=_photo(BRIGHT)))
        identity = client.post("/identities", json={"name": "Ada"}).json()["id"]
        enrol = client.post(f"/identities/{identity}/faces", files=_files(image=_photo(BRIGHT)))
        identify = client.post("/identify", files=_files(image=_photo(BRIGHT)))
        probe = client.post(
            "/verify", files=_files(image=_photo(BRIGHT)), data={"identity_id": identity}
        )
    assert pair.status_code == 200 and pair.json()["match"] is True
    assert enrol.status_code == 201 and enrol.json()["liveness"]["live"] is True
    assert identify.status_code == 200
    assert identify.json()["results"][0]["face"]["liveness"]["live"] is True
    assert probe.status_code == 200 and probe.json()["faces"][0]["liveness"]["live"] is True


def test_liveness_on_a_pack_without_models_is_409_liveness_unavailable(app_client, plain_pack):
    with app_client(plain_pack) as client:
        asked = client.post("/embed", files=_files(image=_photo(BRIGHT)), data={"liveness": "true"})
        plain = client.post("/embed", files=_files(image=_photo(BRIGHT)))
    assert asked.status_code == 409 and _code(asked) == "liveness_unavailable"
    assert plain.status_code == 200
    with app_client(plain_pack, liveness="require") as client:
        required = client.post(
            "/verify", files=_files(image1=_photo(BRIGHT), image2=_photo(BRIGHT))
        )
    assert required.status_code == 409 and _code(required) == "liveness_unavailable"


# --- reduced decodes ----------------------------------------------------------------------


def _pipeline(pack_dir: Path):
    return FacePipeline.from_pack(load_pack(pack_dir), PipelineOptions(), RuntimeOptions())


def _expected_score(image: np.ndarray, box: np.ndarray) -> float:
    """What the synthetic models give for `box`, cropped from the full-resolution image."""
    return float(
        np.mean(
            [
                live_probability(float(liveness_crop(image, box, scale, 80).mean()))
                for scale in (2.7, 4.0)
            ]
        )
    )


def test_liveness_crops_from_a_reduced_decode_match_the_full_resolution_crops(tmp_path):
    # A 2560 px JPEG is decoded at a reduced DCT scale; the face's crops are taken there,
    # with the box scaled down, and must see what the full-resolution crops see.
    big = SyntheticFace.from_box((240.0, 200.0, 400.0, 400.0))
    pack = add_liveness_models(make_manifest_pack(tmp_path / "pack", [big]))
    photo = noise_image(2560, seed=3)
    data = encode(photo, ".jpg")
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    pipeline = _pipeline(pack)
    analyzed = pipeline.analyze(data, liveness=True)
    face = analyzed.faces[0]
    assert face.face.box == pytest.approx([960, 800, 1600, 1600], abs=1)  # full-res pixels
    assert face.liveness.score == pytest.approx(_expected_score(full, face.face.box), abs=0.02)


def test_a_small_face_in_a_large_jpeg_is_decoded_at_full_resolution_once(tmp_path, monkeypatch):
    # Too small for both the aligned crop and the liveness crops in the reduced decode: the
    # liveness stage reuses the full-resolution decode alignment made, never a second one.
    small = SyntheticFace.from_box((300.0, 300.0, 308.0, 309.0))  # 32x36 px at 2560
    pack = add_liveness_models(make_manifest_pack(tmp_path / "pack", [small]))
    data = encode(noise_image(2560, seed=4), ".jpg")
    pipeline = _pipeline(pack)
    calls = []
    original = pipeline_module.decode_image

    def counting_decode(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "decode_image", counting_decode)
    analyzed = pipeline.analyze(data, liveness=True)
    assert analyzed.faces[0].liveness is not None
    assert len(calls) == 1


def test_status_reports_the_liveness_mode_and_models(app_client, liveness_pack, plain_pack):
    with app_client(liveness_pack, liveness="report") as client:
        with_models = client.get("/status").json()
    with app_client(plain_pack) as client:
        without = client.get("/status").json()
    assert with_models["liveness"] == "report"
    assert with_models["liveness_model"].startswith("synthetic@")
    assert without["liveness"] == "off" and without["liveness_model"] is None


def test_batched_liveness_gives_the_verdicts_of_direct_calls(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from service.faces.batching import BatchingOptions

    pack = add_liveness_models(make_manifest_pack(tmp_path / "pack", [FACE]))
    direct, batched = _pipeline(pack), _pipeline(pack)
    batched.enable_batching(BatchingOptions(max_batch=8, max_wait_ms=20))
    photos = [_photo(level) for level in (BRIGHT, DARK, 128, 90)]
    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent runs share model calls
            joined = list(pool.map(lambda data: batched.analyze(data, liveness=True), photos))
    finally:
        batched.close()
    for data, answer in zip(photos, joined, strict=True):
        expected = direct.analyze(data, liveness=True).faces[0].liveness
        got = answer.faces[0].liveness
        assert got.live == expected.live and got.score == pytest.approx(expected.score, abs=1e-6)
