"""The gallery's interfaces and the values that cross them, shared by both backends.

- `GalleryStore`: durable identities and faces (the source of truth). Implemented by
  `SqliteStore` (service/gallery/store.py, embedded) and `MilvusStore` (service/gallery/milvus.py).
- `ChangeLog`: the ordered log of face additions and removals a per-worker index follows. Only
  the embedded store has one: with Milvus the search runs in Milvus, so nothing follows a log.
- `FaceSearch`: top-k nearest faces of the loaded model. `IndexSync` (a FAISS index per worker,
  kept in step with the change log) or `MilvusSearch` (a search request to Milvus).

`Gallery` (service/gallery/gallery.py) takes one store and one search and holds every rule the
routes rely on (ranking per identity, widening, model tagging), so the routes never know which
backend is in use.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np

ChangeOp = Literal["add", "remove"]


# What an identity or face id may hold, on both backends: the ids the service makes (uuid4 hex)
# and those an import brings (employee numbers, e-mail-like keys). ASCII letters, digits and
# `_.:@-`, starting with a letter or digit, at most 128 characters: every id fits Milvus's
# VARCHAR(128) column and a filter literal as it is, and a URL path without escaping.
ID_MAX_LENGTH = 128
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


def valid_id(value: str) -> bool:
    """Whether `value` may be an identity or face id (`ID_PATTERN`)."""
    return re.fullmatch(ID_PATTERN, value) is not None


def utc_now() -> str:
    """Timestamps of identities and faces: ISO 8601 in UTC, microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    """Identity and face ids: random uuid4 hex (no ordering, nothing guessable)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Identity:
    """An enrolled person (or any labelled subject); `face_count` counts all models' faces."""

    id: str
    name: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    face_count: int = 0


@dataclass(frozen=True)
class FaceRecord:
    """One enrolled face: an embedding and where it came from. No image is ever stored."""

    face_id: str
    index_id: int
    identity_id: str
    model_id: str
    quality: float
    det_score: float
    image_sha256: str
    created_at: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FaceRecord:
        """From a stored row with these field names (a SQLite row or a Milvus entity)."""
        return cls(
            face_id=row["face_id"],
            index_id=int(row["index_id"]),
            identity_id=row["identity_id"],
            model_id=row["model_id"],
            quality=float(row["quality"]),
            det_score=float(row["det_score"]),
            image_sha256=row["image_sha256"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class NewFace:
    """What enrolment (or an import) hands the store. `face_id` is chosen by the store unless
    given; a given one that already exists is not stored twice (imports are idempotent)."""

    identity_id: str
    model_id: str
    embedding: np.ndarray  # (d,) float32, L2-normalised
    quality: float
    det_score: float
    image_sha256: str
    face_id: str | None = None


@dataclass(frozen=True)
class IdentityEmbeddings:
    """An identity and its faces made by one model, read together (one consistent view)."""

    identity: Identity
    faces: list[FaceRecord]
    embeddings: np.ndarray  # (n, d) float32, one row per face; (0, 0) when there is none


@dataclass(frozen=True)
class ExportedIdentity:
    """An identity with every face of every model and their embeddings (export, migration)."""

    identity: Identity
    faces: list[FaceRecord]
    embeddings: list[np.ndarray]  # one (d,) row per face; models may differ in d


@dataclass(frozen=True)
class FaceLabel:
    """What a search hit needs to be reported: the face and its identity's current name."""

    index_id: int
    face_id: str
    identity_id: str
    name: str


@dataclass(frozen=True)
class Change:
    """One entry of the change log. For an `add` of a face that still exists and belongs to
    the requested model, `embedding` holds it; otherwise it is None (the face was removed since,
    or was made by another model)."""

    seq: int
    op: ChangeOp
    index_id: int
    model_id: str
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Snapshot:
    """Every face of one model at one point of the change log (`seq`), and how many faces
    other models made (those can never be searched with this model's index)."""

    seq: int
    index_ids: np.ndarray  # (n,) int64
    embeddings: np.ndarray  # (n, d) float32
    other_model_faces: int


@dataclass(frozen=True)
class ChangesSince:
    """Changes after a seq, or `complete=False` when the log was pruned past it (rebuild)."""

    changes: list[Change] = field(default_factory=list)
    complete: bool = True


@dataclass(frozen=True)
class SearchResult:
    """Per query row: similarities (descending) and index ids; -1 ids mark empty slots."""

    similarities: np.ndarray  # (n, k) float32
    ids: np.ndarray  # (n, k) int64


@dataclass(frozen=True)
class IndexState:
    """What /metrics and the docs report about the live search."""

    kind: str  # flat, hnsw, ivf (FAISS) or milvus
    device: str  # cpu, gpu, or remote (Milvus)
    size: int
    seq: int
    other_model_faces: int


class GalleryStore(Protocol):
    """Durable identities and faces."""

    def create_identity(
        self, name: str, metadata: dict[str, Any], identity_id: str | None = None
    ) -> Identity | None:
        """A new identity; with `identity_id` (imports), None when that id already exists."""
        ...

    def create_identities(self, identities: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        """Create many (id, name, metadata) identities at once (imports); ids that exist are
        kept as they are. Returns how many were created."""
        ...

    def get_identity(self, identity_id: str) -> Identity | None: ...

    def list_identities(self, limit: int, offset: int) -> list[Identity]:
        """A page of identities in creation order."""
        ...

    def update_identity(
        self, identity_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Identity | None: ...

    def delete_identity(self, identity_id: str) -> list[int] | None:
        """Delete an identity and its faces; the removed index ids, or None if unknown."""
        ...

    def add_face(self, face: NewFace) -> FaceRecord | None:
        """Store a face; None if the identity does not exist (any more)."""
        ...

    def add_faces(self, faces: Sequence[NewFace]) -> int:
        """Store many faces at once (imports); faces whose `face_id` exists, or whose identity
        does not, are skipped. Returns how many were stored."""
        ...

    def import_batch(
        self,
        identities: Sequence[tuple[str, str, dict[str, Any]]],
        faces: Sequence[NewFace],
    ) -> tuple[int, int]:
        """`create_identities` then `add_faces` as one write where the backend can (SQLite: one
        transaction, so a failure leaves no identity without its faces). Returns (identities
        created, faces stored)."""
        ...

    def delete_face(self, identity_id: str, face_id: str) -> int | None:
        """Delete one face of an identity; its index id, or None if there is no such face."""
        ...

    def faces_of(self, identity_id: str) -> list[FaceRecord]: ...

    def embeddings_of(self, identity_id: str, model_id: str) -> tuple[list[FaceRecord], np.ndarray]:
        """An identity's faces made by `model_id`, with their embeddings as (n, d) rows."""
        ...

    def identity_embeddings(self, identity_id: str, model_id: str) -> IdentityEmbeddings | None:
        """The identity with its faces made by `model_id`, as of one moment; None if unknown."""
        ...

    def export(self, batch_size: int) -> Iterator[ExportedIdentity]:
        """Every identity with all its faces and embeddings, in creation order."""
        ...

    def labels(self, index_ids: Sequence[int]) -> dict[int, FaceLabel]:
        """Face and identity of each index id that still exists (deleted ones are absent)."""
        ...

    def embeddings_by_index_id(
        self, index_ids: Sequence[int], model_id: str
    ) -> dict[int, np.ndarray]:
        """The stored embedding of each of `index_ids` made by `model_id` (deleted ones and
        other models' are absent)."""
        ...

    def counts(self) -> tuple[int, int]:
        """(identities, faces) in the store."""
        ...

    def faces_per_model(self) -> dict[str, int]: ...

    def erase(self) -> bool:
        """Make deleted content unreadable on disk; True when nothing of it is left."""
        ...

    def health(self) -> str | None:
        """Why the store cannot serve now, in one line, or None; cheap enough for a probe
        (never a count over the gallery)."""
        ...

    def close(self) -> None: ...


class ChangeLog(Protocol):
    """The ordered log of face additions and removals that a per-worker index replays."""

    def snapshot(self, model_id: str) -> Snapshot: ...

    def changes_since(self, seq: int, model_id: str) -> ChangesSince: ...

    def last_seq(self) -> int: ...

    def faces_per_model(self) -> dict[str, int]: ...


class FaceSearch(Protocol):
    """Nearest faces of the loaded model; kept consistent with the store at every request."""

    @property
    def state(self) -> IndexState: ...

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k faces per query row (fewer columns than k: the whole gallery was searched).
        Also refreshes `state.other_model_faces`."""
        ...

    def catch_up(self) -> int:
        """Bring the search up to date with the store (after a write by this worker)."""
        ...

    def indexed_ids(self) -> np.ndarray:
        """Every searchable index id (sorted), for consistency checks."""
        ...

    def erased(self) -> None:
        """Faces were deleted: drop any copy of the gallery kept outside the store."""
        ...

    def start_polling(self, interval_s: float) -> None: ...

    def stop(self) -> None: ...
