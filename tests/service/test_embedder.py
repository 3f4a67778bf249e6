"""Embedder: batching, normalisation, flip-test, pre-processing from the pack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_models import make_recognizer

from service.faces.embedder import Embedder
from service.packs import RecognizerSpec
from service.runtime import RuntimeOptions, create_session


def _crops(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(count)]


def _embedder(path: Path, **spec) -> Embedder:
    session = create_session(path, RuntimeOptions(providers="cpu"))
    return Embedder(session, RecognizerSpec(file=path.name, embedding_size=8, **spec))


@pytest.fixture
def dynamic_model(tmp_path: Path) -> Path:
    return make_recognizer(tmp_path / "rec.onnx", embedding_size=8)


def test_batch_equals_one_by_one_and_is_unit_norm(dynamic_model):
    embedder = _embedder(dynamic_model)
    crops = _crops(5)
    batch = embedder.embed(crops)
    singles = np.concatenate([embedder.embed([crop]).embeddings for crop in crops])
    assert batch.embeddings.shape == (5, 8)
    np.testing.assert_allclose(batch.embeddings, singles, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch.embeddings, axis=1), 1.0, atol=1e-5)
    assert np.all(batch.norms > 0)


def test_fixed_batch_model_is_called_face_by_face(tmp_path, dynamic_model):
    fixed = make_recognizer(tmp_path / "fixed.onnx", embedding_size=8, dynamic_batch=False)
    crops = _crops(3)
    np.testing.assert_allclose(
        _embedder(fixed).embed(crops).embeddings,
        _embedder(dynamic_model).embed(crops).embeddings,
        atol=1e-5,
    )


def test_flip_sums_crop_and_mirror_before_normalising(dynamic_model):
    embedder = _embedder(dynamic_model)
    crop = _crops(1)[0]
    plain = embedder.embed([crop])
    mirror = embedder.embed([crop[:, ::-1].copy()])
    flipped = embedder.embed([crop], flip=True)
    expected = plain.embeddings[0] * plain.norms[0] + mirror.embeddings[0] * mirror.norms[0]
    np.testing.assert_allclose(
        flipped.embeddings[0], expected / np.linalg.norm(expected), atol=1e-5
    )
    assert flipped.norms[0] == pytest.approx(plain.norms[0])


def test_colour_order_and_mean_std_come_from_the_spec(dynamic_model):
    crop = _crops(1, seed=3)[0]
    rgb = _embedder(dynamic_model, color_order="RGB").embed([crop]).embeddings
    bgr_of_swapped = _embedder(dynamic_model, color_order="BGR").embed([crop[..., ::-1]])
    np.testing.assert_allclose(rgb, bgr_of_swapped.embeddings, atol=1e-5)
    other_mean = _embedder(dynamic_model, mean=0.0, std=255.0).embed([crop]).embeddings
    assert not np.allclose(rgb, other_mean, atol=1e-3)


def test_wrong_crop_size_is_refused(dynamic_model):
    with pytest.raises(ValueError, match="crop shape"):
        _embedder(dynamic_model).embed([np.zeros((100, 100, 3), np.uint8)])


def test_no_crops_gives_empty_batch(dynamic_model):
    batch = _embedder(dynamic_model).embed([])
    assert batch.embeddings.shape == (0, 8) and batch.norms.shape == (0,)
