"""Face embeddings from an ONNX recognizer: aligned crops in, unit vectors out.

Batch-first (`embed(crops) -> (n, d)`) so that one model call serves many faces, and a
cross-request batcher can later sit in front of `embed` without changing callers. The
pre-processing (colour order, mean, std) comes from the pack, never from guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.matching import l2_normalize
from service.packs import RecognizerSpec

# Faces per model call; bounds peak memory for images with crowds (112x112x3 float32 = 150 KB).
MAX_BATCH = 64


@dataclass(frozen=True)
class EmbeddingBatch:
    """Unit-norm embeddings (n, d) and the norms the raw embeddings had (n,)."""

    embeddings: np.ndarray
    norms: np.ndarray


class Embedder:
    """Runs the recognizer on aligned BGR uint8 crops of the recognizer's input size."""

    def __init__(self, session: ort.InferenceSession, spec: RecognizerSpec) -> None:
        self._session = session
        self._spec = spec
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        batch_dim = model_input.shape[0]
        self._max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else MAX_BATCH
        output_dim = session.get_outputs()[0].shape[-1]
        self.embedding_size = output_dim if isinstance(output_dim, int) else spec.embedding_size

    @property
    def input_size(self) -> int:
        return self._spec.input_size

    def _blob(self, crops: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(crops).astype(np.float32)  # (n, H, W, 3) BGR
        if self._spec.color_order == "RGB":
            batch = batch[..., ::-1]
        batch = (batch - self._spec.mean) / self._spec.std
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def input_blob(self, crops: list[np.ndarray]) -> np.ndarray:
        """The recognizer's input (n, 3, H, W) for `crops`, pre-processed as the pack says."""
        return self._blob(crops)

    def raw_embeddings(self, crops: list[np.ndarray]) -> np.ndarray:
        """The recognizer's output (n, d) before normalisation, in batches of at most
        `MAX_BATCH` (or the model's fixed batch size)."""
        outputs = [
            self._session.run(None, {self._input_name: self._blob(crops[i : i + self._max_batch])})[
                0
            ]
            for i in range(0, len(crops), self._max_batch)
        ]
        return np.concatenate(outputs).astype(np.float32).reshape(len(crops), -1)

    def embed(self, crops: list[np.ndarray], *, flip: bool = False) -> EmbeddingBatch:
        """Embed aligned crops. With `flip`, each embedding is the sum of the crop's and its
        mirror's raw embeddings (the flip-test of the CosFace/ArcFace evaluation protocol);
        the norms (a quality signal) are always those of the unflipped crops."""
        if not crops:
            return EmbeddingBatch(
                np.zeros((0, self.embedding_size), np.float32), np.zeros(0, np.float32)
            )
        for crop in crops:
            if crop.shape != (self.input_size, self.input_size, 3):
                raise ValueError(
                    f"crop shape {crop.shape}, expected {(self.input_size,) * 2 + (3,)}"
                )
        if flip:
            raw_all = self.raw_embeddings(list(crops) + [crop[:, ::-1] for crop in crops])
            raw, mirrored = raw_all[: len(crops)], raw_all[len(crops) :]
            embeddings, _ = l2_normalize(raw + mirrored)
            _, norms = l2_normalize(raw)
        else:
            embeddings, norms = l2_normalize(self.raw_embeddings(crops))
        return EmbeddingBatch(embeddings, norms)
