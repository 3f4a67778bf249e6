"""The pipeline's per-request cost is bounded: faces kept per image, faces embedded per route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_models import SyntheticFace, make_pack_folder
from testimages import encode, noise_image

from service.faces.images import DecodeLimits, decode_image, decode_reduced
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions

# Largest first by area; the small one has the highest detection score.
FACES = [
    SyntheticFace.from_box((20.0, 20.0, 260.0, 300.0), score=0.7),
    SyntheticFace.from_box((300.0, 40.0, 480.0, 250.0), score=0.8),
    SyntheticFace.from_box((500.0, 400.0, 600.0, 520.0), score=0.95),
]


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    return make_pack_folder(tmp_path / "pack", FACES)


def _pipeline(pack_dir: Path, **options) -> tuple[FacePipeline, list[int]]:
    """A pipeline whose recognizer records how many crops each call embeds."""
    pipeline = FacePipeline.from_pack(
        load_pack(pack_dir), PipelineOptions(**options), RuntimeOptions(intra_op_threads=1)
    )
    calls: list[int] = []
    embed = pipeline.embedder.embed

    def counting_embed(crops, **kwargs):
        calls.append(len(crops))
        return embed(crops, **kwargs)

    pipeline.embedder.embed = counting_embed
    return pipeline, calls


def test_one_face_routes_embed_only_the_face_they_use(pack_dir) -> None:
    pipeline, calls = _pipeline(pack_dir)
    photo = encode(noise_image(seed=1))
    everything = pipeline.analyze(photo)
    largest = pipeline.analyze(photo, faces="largest")
    best = pipeline.analyze(photo, faces="best")
    assert calls == [3, 1, 1]
    assert largest.faces[0].embedding == pytest.approx(everything.faces[0].embedding, abs=1e-6)
    assert best.faces[0].face.score == pytest.approx(0.95)
    assert best.faces[0].embedding == pytest.approx(everything.faces[2].embedding, abs=1e-6)


def test_max_faces_keeps_the_largest_faces(pack_dir) -> None:
    pipeline, calls = _pipeline(pack_dir, max_faces=2)
    photo = encode(noise_image(seed=2))
    analyzed = pipeline.analyze(photo)
    detected = pipeline.detect(photo)
    assert calls == [2]
    assert [f.face.score for f in analyzed.faces] == pytest.approx([0.7, 0.8])
    assert len(detected.faces) == 2 and detected.too_small == 0


def test_max_faces_setting_reaches_the_api(app_client, pack_dir) -> None:
    photo = encode(noise_image(seed=3))
    with app_client(pack_dir, max_faces=1) as client:
        response = client.post("/embed", files={"image": ("a.png", photo, "image/png")})
    assert response.status_code == 200
    assert len(response.json()["faces"]) == 1


def test_large_jpeg_is_decoded_reduced_and_small_faces_aligned_at_full_resolution(
    tmp_path,
) -> None:
    """A 2560 px JPEG reaches the 640 px detector from a 1/2-scale DCT decode (twice the
    detector's size, `DRAFT_MARGIN`); boxes come back
    in full-resolution pixels, and a face too small to align from the reduced pixels is
    aligned from a full-resolution decode (the same crop `embed_faces` makes from one)."""
    small = SyntheticFace.from_box((300.0, 300.0, 330.0, 336.0), score=0.9)
    pipeline, _ = _pipeline(make_pack_folder(tmp_path / "small", [FACES[0], small]))
    photo = encode(noise_image(size=2560, seed=5), ".jpg")
    reduced = decode_reduced(photo, DecodeLimits(), fit_into=(640, 640))
    assert reduced.pixels.shape == (1280, 1280, 3) and (reduced.width, reduced.height) == (
        2560,
        2560,
    )
    analyzed = pipeline.analyze(photo)
    assert analyzed.width == 2560
    assert [f.face.box for f in analyzed.faces][1] == pytest.approx(np.array(small.box) * 4)
    full = decode_image(photo)
    reference = pipeline.embed_faces(full, [face.face for face in analyzed.faces])
    assert float(analyzed.faces[1].embedding @ reference[1].embedding) == pytest.approx(
        1.0, abs=1e-5
    )
