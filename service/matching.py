"""Embedding arithmetic and the one rule that turns a similarity into a decision.

Embeddings are L2-normalised once (`l2_normalize`), so cosine similarity is a dot product;
`decide` is the only place a threshold is compared with a score.
"""

from __future__ import annotations

import numpy as np

# Norms below this are treated as zero vectors (a recognizer never outputs them for a face).
_EPSILON = 1e-12


def l2_normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise unit vectors of a (n, d) array, and the norms they had (float32)."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(matrix, axis=1)
    return matrix / np.maximum(norms, _EPSILON)[:, None], norms


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit vectors, clipped to [-1, 1] against rounding."""
    return float(np.clip(np.dot(a, b), -1.0, 1.0))


def cosine_similarities(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of each unit row of `vectors` (n, d) with the unit `query` (d,),
    clipped to [-1, 1]."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    return np.clip(np.asarray(vectors, dtype=np.float32) @ query, -1.0, 1.0)


def paired_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each unit row of `a` with the same row of `b` (both (n, d)),
    clipped to [-1, 1]."""
    return np.clip(np.sum(np.asarray(a) * np.asarray(b), axis=1), -1.0, 1.0)


def decide(similarity: float, threshold: float) -> bool:
    """Same person iff the cosine similarity reaches the threshold."""
    return similarity >= threshold
