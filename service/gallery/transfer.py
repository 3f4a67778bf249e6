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
whole before anything is written, with the HTTP API's own schemas (`IdentityCreate` for the
name and metadata, `EmbeddingEnrol` for the model and embedding), finite numbers, and the
column sizes of the Milvus backend: any bad line (another model, a wrong size, a blank name, too
much metadata...) refuses the whole import, and the message lists every bad line by number.

Writes go in batches of whole identities: an identity and its faces from the file are written
in one store call (`GalleryStore.import_batch`, one SQLite transaction), so a failure (a full
disk) leaves no identity without the faces the file gives it; the command names the cause in
one line, and a re-run (idempotent) finishes the job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import Field, ValidationError, model_validator
from tqdm import tqdm

from service.gallery import milvus
from service.gallery.interface import GalleryStore, NewFace
from service.gallery.records import EmbeddingEnrol, IdentityCreate
from service.matching import l2_normalize

# Faces written per store call: one SQLite transaction (one fsync) or one Milvus insert each.
IMPORT_BATCH_FACES = 2_000
# Identity ids from other systems: printable, no path or filter metacharacters.
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class TransferError(Exception):
    """An import, export or migration that cannot run; the message says why and what to do."""


# Bad lines a refused import lists one by one; past this, the message gives only their count.
MAX_REPORTED_LINES = 20
# Hex digits of a sha256 (the `image_sha256` of a face).
SHA256_PATTERN = r"^([0-9a-f]{64})?$"


class ImportLine(IdentityCreate):
    """One line of an import file. Name and metadata obey `IdentityCreate` (the rules of
    POST /identities), model and embedding `EmbeddingEnrol` (POST /identities/{id}/embeddings);
    every number must be finite."""

    external_id: str = Field(pattern=EXTERNAL_ID_PATTERN)
    model: str | None = None
    embedding: list[float] | None = None
    face_id: str | None = Field(None, pattern=EXTERNAL_ID_PATTERN)
    quality: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    det_score: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    image_sha256: str = Field("", pattern=SHA256_PATTERN)

    @model_validator(mode="after")
    def _embedding_as_the_api_takes_it(self) -> ImportLine:
        if (self.model is None) != (self.embedding is None):
            raise ValueError("`model` and `embedding` go together (or neither)")
        if self.model is not None:
            try:
                EmbeddingEnrol(model=self.model, embedding=self.embedding or [])
            except ValidationError as error:
                raise ValueError(_first_error(error)) from None
        return self


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _column_overflow(line: ImportLine) -> str | None:
    """The first text too long for its Milvus VARCHAR column (sizes in UTF-8 bytes), if any.
    The schemas' limits are well inside these sizes; this keeps it so if either changes."""
    texts = {
        "external_id": (line.external_id, milvus.ID_LENGTH),
        "name": (line.name, milvus.NAME_LENGTH),
        "metadata": (json.dumps(line.metadata, ensure_ascii=False), milvus.METADATA_LENGTH),
        "model": (line.model or "", milvus.MODEL_LENGTH),
        "face_id": (line.face_id or "", milvus.ID_LENGTH),
        "image_sha256": (line.image_sha256, milvus.SHA256_LENGTH),
    }
    for field, (text, limit) in texts.items():
        size = len(text.encode("utf-8"))
        if size > limit:
            return f"{field}: {size} bytes, over the gallery's column size of {limit}"
    return None


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


def _parse(
    lines: Iterator[str], *, check_columns: bool = True
) -> Iterator[tuple[int, ImportLine | str]]:
    """Each non-blank line's number with its validated value, or what is wrong with it (the
    column sizes only with `check_columns`: the writing pass reads lines checked before)."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = ImportLine.model_validate_json(text)
        except ValidationError as error:
            yield number, _first_error(error)
            continue
        yield number, (_column_overflow(line) if check_columns else None) or line


def _check(line: ImportLine, model_id: str, dim: int) -> str | None:
    """What makes a valid line unusable with this gallery's model, if anything."""
    if line.model is None or line.embedding is None:
        return None
    if line.model != model_id:
        return f"the embedding was made by {line.model!r}, not by this gallery's model"
    if len(line.embedding) != dim:
        return (
            f"the embedding must have {dim} finite values for {model_id} "
            f"(got {len(line.embedding)})"
        )
    if not any(line.embedding):
        return "the embedding is all zeros"
    return None


def _refusal(problems: list[tuple[int, str]], count: int, model_id: str) -> TransferError:
    listed = "\n".join(f"  line {number}: {problem}" for number, problem in problems)
    more = count - len(problems)
    text = (
        f"{count} line(s) of the file cannot be imported (fix or remove them and run the "
        "import again):\n" + listed
    )
    if more:
        text += f"\n  ... and {more} more"
    if any("not by this gallery's model" in problem for _, problem in problems):
        text += (
            f"\nThis gallery's model is {model_id!r}; embeddings of different models cannot be "
            "compared. Re-embed the photos with the loaded model, or import with "
            "FACEVERIFY_PACK_DIR pointing at the pack of that model."
        )
    return TransferError(text + "\nNothing was imported.")


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
    problems: list[tuple[int, str]] = []
    bad = 0
    # The last line of each identity: a batch is written only once its identities are whole.
    last_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        total, faces_in_file = 0, 0
        for number, line in _parse(lines):
            problem = line if isinstance(line, str) else _check(line, model_id, dim)
            if problem is not None:
                bad += 1
                if len(problems) < MAX_REPORTED_LINES:
                    problems.append((number, problem))
                continue
            assert isinstance(line, ImportLine)
            last_line[line.external_id] = number
            total += 1
            faces_in_file += line.embedding is not None
    if bad:
        raise _refusal(problems, bad, model_id)

    created, stored = 0, 0
    batch: list[NewFace] = []
    identities: dict[str, tuple[str, str, dict[str, Any]]] = {}
    batch_first_line, batch_complete_at = 0, 0

    def flush() -> None:
        nonlocal created, stored
        if not identities:
            return
        try:
            new_identities, new_faces = store.import_batch(list(identities.values()), batch)
        except Exception as error:
            if _disk_full(error):
                raise TransferError(
                    f"disk full while importing {path} (lines {batch_first_line} onwards): "
                    "nothing from the failed batch was written; free space and re-run the "
                    "import (it skips what is already there)"
                ) from None
            raise
        created += new_identities
        stored += new_faces
        identities.clear()
        batch.clear()

    with (
        path.open(encoding="utf-8") as lines,
        tqdm(total=total, unit="line", disable=not progress, file=sys.stderr) as bar,
    ):
        for number, line in _parse(lines, check_columns=False):
            assert isinstance(line, ImportLine)  # every line was checked above
            if not identities:
                batch_first_line = number
            identities.setdefault(line.external_id, (line.external_id, line.name, line.metadata))
            batch_complete_at = max(batch_complete_at, last_line[line.external_id])
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
            full = len(batch) >= IMPORT_BATCH_FACES or len(identities) >= IMPORT_BATCH_FACES
            if full and number >= batch_complete_at:
                flush()
            bar.update(1)
        flush()
    return ImportReport(
        lines=total,
        identities_created=created,
        faces_stored=stored,
        faces_already_there=faces_in_file - stored,
    )


def _disk_full(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from or during, is a full disk: SQLite's
    SQLITE_FULL ("database or disk is full") or an OS-level ENOSPC. A full disk can surface
    as a later error (a ROLLBACK of a transaction SQLite already ended), so the chain counts."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "disk is full" in str(current)
        ):
            return True
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        current = current.__cause__ or current.__context__
    return False


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


# An export holds every embedding of the gallery (biometric data) and outlives deletions from
# it: only its owner may read it, like the keys file.
EXPORT_FILE_MODE = 0o600


def open_private(path: Path) -> TextIO:
    """`path` opened for writing text with mode 0600, also when it existed with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, EXPORT_FILE_MODE)
    try:
        os.fchmod(fd, EXPORT_FILE_MODE)
        return os.fdopen(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def export_to_file(store: GalleryStore, path: Path, *, progress: bool) -> Counts:
    """Export into `path`; a write that fails (a full disk) removes the partial file, which
    would otherwise hold part of the gallery's embeddings, and says so in one line."""
    opened = False
    try:
        with open_private(path) as out:
            opened = True
            return export_gallery(store, out, progress=progress)
    except OSError as error:
        if opened:  # never a file this command could not open
            path.unlink(missing_ok=True)
        cause = "disk full" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise TransferError(
            f"{cause} while writing the export {path}: nothing was exported"
            + (" (the partial file was removed)" if opened else "")
            + "; free space or choose another --out and re-run"
        ) from None
