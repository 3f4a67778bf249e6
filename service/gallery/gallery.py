"""The gallery as the routes see it: identities, enrolled faces, 1:N search and 1:1 compare.

It ties the durable store to this worker's index and turns store answers into `ServiceError`s
the HTTP layer maps to statuses. Embeddings are tagged with the model that made them, and a
gallery is only ever searched with the model that is loaded: faces of another model are never
compared. While any exist, `identify` refuses with `model_mismatch` (an "unknown" answer could
be wrong: the person may be enrolled under the old model only), and `compare` refuses for an
identity that has no face of the loaded model.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ErrorCode, ServiceError
from service.gallery.batched_search import DEFAULT_MAX_ROWS, BatchedSearch
from service.gallery.fpir import Probe
from service.gallery.index import IndexSetting
from service.gallery.interface import (
    FaceRecord,
    FaceSearch,
    GalleryStore,
    Identity,
    IndexState,
    NewFace,
)
from service.gallery.sync import POLL_INTERVAL_S, IndexSync
from service.matching import cosine_similarities, l2_normalize
from service.metrics import Metrics

logger = logging.getLogger(__name__)

# Faces fetched per wanted identity on the first search pass. Identities with many enrolled
# faces can fill the top k faces alone; the search widens (x4) until it finds `top_k`
# identities or has seen the whole gallery.
FACES_PER_IDENTITY_FIRST_PASS = 4
SEARCH_WIDENING = 4
# Faces labelled per store call while sampling FPIR probes, and how many faces are drawn per
# probe wanted (several faces of one identity count once).
PROBE_PAGE = 500
PROBE_OVERDRAW = 2


@dataclass(frozen=True)
class Candidate:
    """One identity in a 1:N answer: its best face's similarity to the query face."""

    identity_id: str
    name: str
    similarity: float
    face_id: str


@dataclass(frozen=True)
class GalleryMatch:
    """1:1 comparison of a face with an enrolled identity (best over its faces)."""

    identity_id: str
    name: str
    similarity: float
    face_id: str


@dataclass(frozen=True)
class IdentityDetails:
    identity: Identity
    faces: list[FaceRecord]


def _not_found(identity_id: str) -> ServiceError:
    return ServiceError(
        ErrorCode.NOT_FOUND,
        f"no identity {identity_id!r}; list identities with GET /identities",
    )


class Gallery:
    """Identities and faces in a `GalleryStore`, searched through a `FaceSearch`.

    Without `search`, the store must also be a `ChangeLog` (the embedded backend) and this
    worker gets its own FAISS index following it (`IndexSync`).
    """

    def __init__(
        self,
        store: GalleryStore,
        *,
        model_id: str,
        dim: int,
        index_setting: IndexSetting = "auto",
        approx_min_faces: int = 200_000,
        metrics: Metrics | None = None,
        use_gpu: bool | None = None,
        poll_interval_s: float | None = POLL_INTERVAL_S,
        search: FaceSearch | None = None,
        saved_index: Path | None = None,
        search_batch_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.store = store
        self.model_id = model_id
        self.dim = dim
        self._metrics = metrics
        self._index_labels: tuple[str, str] | None = None
        self.face_changes = 0  # faces added or deleted through this object (FPIR staleness)
        self._sync: FaceSearch = search or IndexSync(
            store,  # type: ignore[arg-type]  # the embedded store is also a ChangeLog
            model_id=model_id,
            dim=dim,
            setting=index_setting,
            approx_min_faces=approx_min_faces,
            use_gpu=use_gpu,
            on_change=self._index_changed,
            saved_index=saved_index,
        )
        # Concurrent requests' queries searched in one call (1 = each alone).
        self._batched = (
            BatchedSearch(self._sync.search, search_batch_rows) if search_batch_rows > 1 else None
        )
        if search is not None:
            self._index_changed(search.state)
        self._update_counts()
        if self._sync.state.other_model_faces:
            logger.warning("%s", self._mismatch_message())
        if poll_interval_s:
            self._sync.start_polling(poll_interval_s)

    # --- metrics ---------------------------------------------------------------------------

    def _index_changed(self, state: IndexState) -> None:
        if self._metrics is None:
            return
        labels = (state.kind, state.device)
        if labels != self._index_labels:
            # Set the old series to 0 rather than removing it: with several workers the
            # values live in shared files that a removal would not reach.
            if self._index_labels is not None:
                self._metrics.index_info.labels(*self._index_labels).set(0)
            self._metrics.index_info.labels(*labels).set(1)
            self._index_labels = labels
        self._update_counts()

    def _update_counts(self) -> None:
        if self._metrics is None:
            return
        try:
            identities, faces = self.store.counts()
        except ServiceError as exc:
            # The gauges wait for the next change: a write that succeeded is not failed for
            # them, and a gallery unreachable at start-up does not stop the service starting.
            if exc.code is not ErrorCode.GALLERY_UNAVAILABLE:
                raise
            logger.info("gallery counts not updated: %s", exc.message)
            return
        self._metrics.gallery_identities.set(identities)
        self._metrics.gallery_faces.set(faces)

    # --- identities ------------------------------------------------------------------------

    def create_identity(self, name: str, metadata: dict[str, Any] | None = None) -> Identity:
        identity = self.store.create_identity(name, metadata or {})
        self._update_counts()
        return identity

    def require_identity(self, identity_id: str) -> Identity:
        """The identity, or `not_found` (a cheap check before costly work)."""
        identity = self.store.get_identity(identity_id)
        if identity is None:
            raise _not_found(identity_id)
        return identity

    def get_identity(self, identity_id: str) -> IdentityDetails:
        identity = self.require_identity(identity_id)
        return IdentityDetails(identity, self.store.faces_of(identity_id))

    def list_identities(self, limit: int, offset: int) -> tuple[list[Identity], int]:
        """One page of identities (in creation order) and the total count."""
        identities, _ = self.store.counts()
        return self.store.list_identities(limit, offset), identities

    def update_identity(
        self, identity_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> IdentityDetails:
        if self.store.update_identity(identity_id, name, metadata) is None:
            raise _not_found(identity_id)
        return self.get_identity(identity_id)

    def delete_identity(self, identity_id: str) -> None:
        """Delete the identity and its faces from the store, then from this worker's index
        (other workers drop them at their next search or poll)."""
        if self.store.delete_identity(identity_id) is None:
            raise _not_found(identity_id)
        self._erase()

    def _erase(self) -> None:
        self.face_changes += 1
        self._sync.erased()
        if not self.store.erase():
            # Common under concurrent traffic and finished by the next checkpoint: not a warning.
            logger.info(
                "deleted embeddings are zeroed in the database, but a concurrent reader kept "
                "the write-ahead log from being truncated; the next deletion or shutdown will "
                "finish erasing them from the files"
            )
        self._sync.catch_up()

    # --- faces -----------------------------------------------------------------------------

    def add_face(
        self,
        identity_id: str,
        embedding: np.ndarray,
        *,
        quality: float,
        det_score: float,
        image_sha256: str,
    ) -> FaceRecord:
        """Store a face made by the loaded model; durable when this returns."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.size != self.dim:
            raise ValueError(f"the gallery holds {self.dim}-d embeddings, got {vector.size}-d")
        if not np.all(np.isfinite(vector)):
            raise ValueError("embedding has non-finite values")
        unit, _ = l2_normalize(vector)
        record = self.store.add_face(
            NewFace(
                identity_id=identity_id,
                model_id=self.model_id,
                embedding=unit[0],
                quality=quality,
                det_score=det_score,
                image_sha256=image_sha256,
            )
        )
        if record is None:
            raise _not_found(identity_id)
        self.face_changes += 1
        self._update_counts()
        return record

    def add_embedding(self, identity_id: str, embedding: list[float], model_id: str) -> FaceRecord:
        """Enrol an embedding computed elsewhere (by the same model, which `model_id` names).

        Refuses another model's embedding (`model_mismatch`: the spaces cannot be compared)
        and a wrong size or non-finite values (`validation_error`). The face's quality is the
        embedding's norm as sent, its detection score 0 (no detection ran here), and its
        `image_sha256` the sha256 of the embedding as little-endian float32 bytes.
        """
        if model_id != self.model_id:
            raise ServiceError(
                ErrorCode.MODEL_MISMATCH,
                f"the embedding was made by {model_id!r}, but this gallery's model is "
                f"{self.model_id!r} (GET /readyz); embeddings of different models cannot be "
                "compared: compute it with the loaded model, or enrol the photo instead",
            )
        with np.errstate(over="ignore", under="ignore"):
            vector = np.asarray(embedding, dtype=np.float64).reshape(-1).astype(np.float32)
            norm = float(np.linalg.norm(vector.astype(np.float64)))
        finite = bool(np.all(np.isfinite(vector)))
        if vector.size != self.dim or not finite:
            raise ServiceError(
                ErrorCode.VALIDATION_ERROR,
                f"the embedding must have {self.dim} finite float32 values (model "
                f"{self.model_id}); got {vector.size} value(s)"
                + ("" if finite else ", some not finite"),
            )
        if not 0.0 < norm < np.finfo(np.float32).max:
            raise ServiceError(
                ErrorCode.VALIDATION_ERROR, f"the embedding's norm {norm:g} cannot be normalised"
            )
        little_endian = vector.astype("<f4").tobytes()
        return self.add_face(
            identity_id,
            vector,
            quality=norm,
            det_score=0.0,
            image_sha256=hashlib.sha256(little_endian).hexdigest(),
        )

    def delete_face(self, identity_id: str, face_id: str) -> None:
        if self.store.delete_face(identity_id, face_id) is None:
            if self.store.get_identity(identity_id) is None:
                raise _not_found(identity_id)
            raise ServiceError(
                ErrorCode.NOT_FOUND,
                f"identity {identity_id!r} has no face {face_id!r}; "
                f"GET /identities/{identity_id} lists its faces",
            )
        self._erase()

    # --- search ----------------------------------------------------------------------------

    @property
    def index_state(self) -> IndexState:
        return self._sync.state

    def indexed_ids(self) -> np.ndarray:
        """Index ids this worker can find (after catching up): for consistency checks."""
        self._sync.catch_up()
        return self._sync.indexed_ids()

    def _mismatch_message(self) -> str:
        others = {m: n for m, n in self.store.faces_per_model().items() if m != self.model_id}
        listed = ", ".join(f"{n} face(s) from {m}" for m, n in sorted(others.items()))
        return (
            f"the gallery holds {listed}, but the loaded model is {self.model_id}; embeddings of "
            "different models cannot be compared. Re-enrol those identities with the loaded "
            "model (POST /identities/{id}/faces) and delete their old faces (GET "
            "/identities/{id} lists each face's model; DELETE /identities/{id}/faces/{face_id}), "
            "or serve the model pack they were enrolled with"
        )

    def identify(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """For each query embedding, up to `top_k` identities ranked by their best face."""
        started = time.perf_counter()
        ranked = self._ranked(embeddings, top_k)
        if self._metrics is not None:
            self._metrics.search_duration.observe(time.perf_counter() - started)
            for candidates in ranked:
                if candidates:
                    self._metrics.best_match_similarity.observe(candidates[0].similarity)
        return ranked

    # --- what the FPIR estimate reads (service.gallery.fpir.GalleryView) ------------------

    def counts(self) -> tuple[int, int]:
        return self.store.counts()

    def changes(self) -> int:
        return self.face_changes

    def sample_probes(self, count: int, rng: random.Random) -> list[Probe]:
        """Up to `count` identities drawn at random through their faces (an identity is
        drawn once however many faces it has), each with the drawn face."""
        ids = [int(i) for i in self.indexed_ids()]
        drawn = rng.sample(ids, min(len(ids), PROBE_OVERDRAW * count))
        probes: dict[str, Probe] = {}
        for start in range(0, len(drawn), PROBE_PAGE):
            page = drawn[start : start + PROBE_PAGE]
            labels = self.store.labels(page)
            vectors = self.store.embeddings_by_index_id(page, self.model_id)
            for index_id in page:
                label, vector = labels.get(index_id), vectors.get(index_id)
                if label is not None and vector is not None:
                    probes.setdefault(label.identity_id, Probe(label.identity_id, vector))
            if len(probes) >= count:
                break
        return list(probes.values())[:count]

    def rank_identities(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        return [
            [(candidate.identity_id, candidate.similarity) for candidate in candidates]
            for candidates in self._ranked(queries, top_k)
        ]

    def _ranked(self, embeddings: np.ndarray, top_k: int) -> list[list[Candidate]]:
        queries = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, self.dim)
        k = max(top_k * FACES_PER_IDENTITY_FIRST_PASS, top_k)
        while True:
            search = self._batched.search if self._batched is not None else self._sync.search
            found = search(queries, k)
            if self._sync.state.other_model_faces:
                raise ServiceError(ErrorCode.MODEL_MISMATCH, self._mismatch_message())
            ranked = self._rank(found.similarities, found.ids, top_k)
            searched_all = found.ids.shape[1] < k
            if searched_all or all(len(r) >= top_k for r in ranked):
                return ranked
            k *= SEARCH_WIDENING

    def _rank(self, similarities: np.ndarray, ids: np.ndarray, top_k: int) -> list[list[Candidate]]:
        labels = self.store.labels([int(i) for i in np.unique(ids) if i >= 0])
        ranked: list[list[Candidate]] = []
        for row_similarities, row_ids in zip(similarities, ids, strict=True):
            best: dict[str, Candidate] = {}
            for similarity, index_id in zip(row_similarities, row_ids, strict=True):
                label = labels.get(int(index_id))
                if label is None or label.identity_id in best:
                    continue  # empty slot, face deleted since, or identity already ranked
                best[label.identity_id] = Candidate(
                    identity_id=label.identity_id,
                    name=label.name,
                    similarity=float(np.clip(similarity, -1.0, 1.0)),
                    face_id=label.face_id,
                )
                if len(best) == top_k:
                    break
            ranked.append(list(best.values()))
        return ranked

    def compare(self, identity_id: str, embedding: np.ndarray) -> GalleryMatch:
        """1:1: the query face against every face of one identity made by the loaded model."""
        # One read for the identity and its faces: a delete between two reads would make a
        # gone identity look like one with only other models' faces (model_mismatch, not 404).
        found = self.store.identity_embeddings(identity_id, self.model_id)
        if found is None:
            raise _not_found(identity_id)
        identity, faces, vectors = found.identity, found.faces, found.embeddings
        if not faces:
            if identity.face_count:
                raise ServiceError(
                    ErrorCode.MODEL_MISMATCH,
                    f"identity {identity_id!r} only has faces enrolled with another model than "
                    f"the loaded {self.model_id}; re-enrol it with POST "
                    f"/identities/{identity_id}/faces",
                )
            raise ServiceError(
                ErrorCode.IDENTITY_HAS_NO_FACES,
                f"identity {identity_id!r} has no enrolled face; enrol one with POST "
                f"/identities/{identity_id}/faces",
            )
        similarities = cosine_similarities(vectors, embedding)
        best = int(np.argmax(similarities))
        return GalleryMatch(
            identity_id=identity_id,
            name=identity.name,
            similarity=float(similarities[best]),
            face_id=faces[best].face_id,
        )

    def store_health(self) -> str | None:
        """Why the store cannot serve now (its file gone, replaced, full or locked; Milvus
        unreachable), or None."""
        return self.store.health()

    def close(self) -> None:
        if self._batched is not None:
            self._batched.close()
        self._sync.stop()
        self.store.close()
