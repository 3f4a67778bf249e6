"""Bulk export, import and migration of a gallery, as embeddings (never photos).

`python -m service gallery export --out FILE`, `gallery import FILE` and `gallery migrate --to
milvus`. The file is JSON Lines, one face per line (an identity without faces is one line
without `model` and `embedding`):

    {"external_id": "...", "name": "...", "metadata": {...}, "model": "name@sha12",
     "embedding": [...], "face_id": "...", "quality": 1.0, "det_score": 0.9,
     "image_sha256": "..."}

`external_id` becomes the identity's id; `face_id`, `quality`, `det_score` and
`image_sha256` are optional. Imports are idempotent: an identity whose id exists is kept as it
is, and a face is keyed by its `face_id` (or, when the line has none, by a hash of identity,
model and embedding), so running an import twice stores nothing twice. A file is checked
whole before anything is written: one line of another model (or of the wrong size) refuses the
import with the line number and what to do.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from service.gallery.interface import GalleryStore, NewFace
from service.matching import l2_normalize

# Faces written per store call: one SQLite transaction (one fsync) or one Milvus insert each.
IMPORT_BATCH_FACES = 2_000
# Identity ids from other systems: printable, no path or filter metacharacters.
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class TransferError(Exception):
    """An import, export or migration that cannot run; the message says why and what to do."""


class ImportLine(BaseModel):
    """One line of an import file."""

    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(pattern=EXTERNAL_ID_PATTERN)
    name: str = Field(min_length=1, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)
    model: str | None = Field(None, min_length=1, max_length=256)
    embedding: list[float] | None = None
    face_id: str | None = Field(None, pattern=EXTERNAL_ID_PATTERN)
    quality: float | None = None
    det_score: float = 0.0
    image_sha256: str = ""


@dataclass(frozen=True)
class ImportReport:
    lines: int
    identities_created: int
    faces_stored: int
    faces_already_there: int


@dataclass(frozen=True)
class Counts:
    identities: int
    faces_per_model: dict[str, int]


def export_gallery(store: GalleryStore, out: TextIO, *, progress: bool = True) -> Counts:
    """Write every identity and face of `store` to `out` as JSON Lines."""
    identities, faces = store.counts()
    per_model: dict[str, int] = {}
    with tqdm(total=faces, unit="face", disable=not progress, file=sys.stderr) as bar:
        for exported in store.export(1_000):
            identity = exported.identity
            base = {
                "external_id": identity.id,
                "name": identity.name,
                "metadata": identity.metadata,
            }
            if not exported.faces:
                out.write(json.dumps(base, ensure_ascii=False) + "\n")
            for face, embedding in zip(exported.faces, exported.embeddings, strict=True):
                line = {
                    **base,
                    "model": face.model_id,
                    "embedding": [float(v) for v in embedding],
                    "face_id": face.face_id,
                    "quality": face.quality,
                    "det_score": face.det_score,
                    "image_sha256": face.image_sha256,
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                per_model[face.model_id] = per_model.get(face.model_id, 0) + 1
            bar.update(len(exported.faces))
    return Counts(identities, per_model)


def _parse(lines: Iterator[str]) -> Iterator[tuple[int, ImportLine]]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, ImportLine.model_validate_json(text)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "line"
            raise TransferError(f"line {number}: {where}: {first['msg']}") from None


def _check(number: int, line: ImportLine, model_id: str, dim: int) -> None:
    if (line.model is None) != (line.embedding is None):
        raise TransferError(f"line {number}: `model` and `embedding` go together (or neither)")
    if line.model is None or line.embedding is None:
        return
    if line.model != model_id:
        raise TransferError(
            f"line {number}: the embedding was made by {line.model!r}, but this gallery's "
            f"model is {model_id!r}; embeddings of different models cannot be compared. "
            "Re-embed the photos with the loaded model, or import with FACEVERIFY_PACK_DIR "
            "pointing at the pack of that model. Nothing was imported."
        )
    if len(line.embedding) != dim or not np.isfinite(np.asarray(line.embedding)).all():
        raise TransferError(
            f"line {number}: the embedding must have {dim} finite values for {model_id} "
            f"(got {len(line.embedding)}). Nothing was imported."
        )
    if not any(line.embedding):
        raise TransferError(f"line {number}: the embedding is all zeros. Nothing was imported.")


def _face_key(line: ImportLine, vector: np.ndarray) -> str:
    """A face id that is the same every time the same line is imported."""
    if line.face_id:
        return line.face_id
    digest = hashlib.sha256(f"{line.external_id}\0{line.model}\0".encode())
    digest.update(vector.astype("<f4").tobytes())
    return digest.hexdigest()[:32]


def import_gallery(
    store: GalleryStore, path: Path, *, model_id: str, dim: int, progress: bool = True
) -> ImportReport:
    """Import a JSON Lines file into `store` (see the module docstring); the file is read
    twice: a check of every line, then the writes."""
    with path.open(encoding="utf-8") as lines:
        total, faces_in_file = 0, 0
        for number, line in _parse(lines):
            _check(number, line, model_id, dim)
            total += 1
            faces_in_file += line.embedding is not None
    created, stored = 0, 0
    batch: list[NewFace] = []
    identities: dict[str, tuple[str, str, dict[str, Any]]] = {}

    def flush() -> None:
        nonlocal created, stored
        created += store.create_identities(list(identities.values()))
        stored += store.add_faces(batch)
        identities.clear()
        batch.clear()

    with (
        path.open(encoding="utf-8") as lines,
        tqdm(total=total, unit="line", disable=not progress, file=sys.stderr) as bar,
    ):
        for _, line in _parse(lines):
            identities.setdefault(line.external_id, (line.external_id, line.name, line.metadata))
            if line.embedding is not None and line.model is not None:
                raw = np.asarray(line.embedding, dtype=np.float32)
                unit, norms = l2_normalize(raw)
                batch.append(
                    NewFace(
                        identity_id=line.external_id,
                        model_id=line.model,
                        embedding=unit[0],
                        quality=float(norms[0]) if line.quality is None else line.quality,
                        det_score=line.det_score,
                        image_sha256=line.image_sha256,
                        face_id=_face_key(line, raw),
                    )
                )
            if len(batch) >= IMPORT_BATCH_FACES or len(identities) >= IMPORT_BATCH_FACES:
                flush()
            bar.update(1)
        flush()
    return ImportReport(
        lines=total,
        identities_created=created,
        faces_stored=stored,
        faces_already_there=faces_in_file - stored,
    )


def migrate(source: GalleryStore, target: GalleryStore, *, progress: bool = True) -> Counts:
    """Copy every identity and face of `source` into `target` (idempotent: ids are kept), then
    check that both hold the same identities and the same faces per model."""
    identities, faces = source.counts()
    with tqdm(total=faces, unit="face", disable=not progress, file=sys.stderr) as bar:
        batch: list[NewFace] = []
        pending: list[tuple[str, str, dict[str, Any]]] = []
        for exported in source.export(1_000):
            identity = exported.identity
            pending.append((identity.id, identity.name, identity.metadata))
            for face, embedding in zip(exported.faces, exported.embeddings, strict=True):
                batch.append(
                    NewFace(
                        identity_id=identity.id,
                        model_id=face.model_id,
                        embedding=embedding,
                        quality=face.quality,
                        det_score=face.det_score,
                        image_sha256=face.image_sha256,
                        face_id=face.face_id,
                    )
                )
            if len(batch) >= IMPORT_BATCH_FACES or len(pending) >= IMPORT_BATCH_FACES:
                target.create_identities(pending)
                target.add_faces(batch)
                bar.update(len(batch))
                batch, pending = [], []
        target.create_identities(pending)
        target.add_faces(batch)
        bar.update(len(batch))
    expected = Counts(identities, source.faces_per_model())
    found = Counts(target.counts()[0], target.faces_per_model())
    if found != expected:
        raise TransferError(
            f"after the copy the target holds {found.identities} identities and faces "
            f"{found.faces_per_model}, the source {expected.identities} and "
            f"{expected.faces_per_model}; was the source written to during the migration, or "
            "does the target hold another gallery? Stop writers and run the migration again "
            "(it is idempotent), or choose another FACEVERIFY_MILVUS_COLLECTION_PREFIX."
        )
    return found
