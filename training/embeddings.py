"""The one L2 normalisation used in training: by the normalised FC (features and class
centres), and by evaluation (embeddings before cosine similarity).

Keeping it in one function means training and evaluation can never disagree on what a unit
embedding is (epsilon, dtype).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Smallest norm divided by; far below any real feature norm (AdaFace reports norms of 10-40),
# it only guards an all-zero vector against a division by zero.
NORM_EPS = 1e-12


def l2_normalize(vectors: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Scale each vector along `dim` to unit L2 norm (an all-zero vector stays zero)."""
    return F.normalize(vectors, p=2.0, dim=dim, eps=NORM_EPS)
