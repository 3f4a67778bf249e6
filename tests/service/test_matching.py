"""Embedding arithmetic: one cosine rule, clipped against rounding, for single, gallery-wide
and paired comparisons alike."""

from __future__ import annotations

import numpy as np
import pytest

from service.matching import (
    cosine_similarities,
    cosine_similarity,
    l2_normalize,
    paired_similarities,
)


def test_gallery_wide_and_paired_similarities_agree_with_the_single_rule() -> None:
    rng = np.random.default_rng(0)
    vectors, _ = l2_normalize(rng.normal(size=(6, 16)))
    query = vectors[2]
    wide = cosine_similarities(vectors, query)
    assert wide == pytest.approx([cosine_similarity(v, query) for v in vectors], abs=1e-6)
    paired = paired_similarities(vectors[:3], vectors[3:])
    assert paired == pytest.approx(
        [cosine_similarity(a, b) for a, b in zip(vectors[:3], vectors[3:], strict=True)], abs=1e-6
    )


def test_rounding_above_one_is_clipped_everywhere() -> None:
    almost = np.array([[1.0000002, 0.0]], dtype=np.float32)
    assert cosine_similarities(almost, almost[0])[0] == 1.0
    assert paired_similarities(almost, almost)[0] == 1.0
    assert cosine_similarity(almost[0], almost[0]) == 1.0
