"""The embedded backend's index saved next to the database, so a worker starts in seconds.

Building a worker's FAISS index from SQLite took 117 s at 1 M x 128-d faces on 2 loaded cores
(bench/gallery_backends.py; docs/gallery.md): every worker of every restart paid it. A worker
that built its index at start-up saves it here with the change-log `seq` it reflects; the next
worker to start loads it, checks it, replays the changes since, and checks it against the
store (`service.gallery.sync`); any doubt and it rebuilds from the store as before.

The file is derived data that answers "who is this?", so a damaged one must never be used: a
swapped or zeroed vector, or a flipped byte in FAISS's id map, would make the service name the
wrong person. The first line is a JSON header (model, size, seq, ...) with the sha256 of that
header and the FAISS bytes (vectors and the ids that map them to faces); `load` recomputes it
and refuses the file on any difference, on a file of another format (older files carried no
checksum), and on anything FAISS or the header checks reject.

One file per model, written 0600 (it holds biometric data) to a temporary name, flushed to
disk and renamed (atomic): a reader never sees a half-written file, and concurrent writers
leave one whole file. A writer holds a lock on its temporary file, so a temporary file nobody
holds was left by a crash (`remove_abandoned`). The file holds embeddings, so a deletion
removes it (`discard_all`), and a writer that finds a removal logged after its snapshot
removes what it wrote: no deleted embedding stays in it after the deletion's answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.index import FaceIndex, IndexKind

logger = logging.getLogger(__name__)

# 2: the header carries `sha256` over the header and the FAISS bytes. Files of format 1 had
# no checksum: they are refused (rebuilt and rewritten), never trusted.
FORMAT_VERSION = 2

SAVED_PREFIX = "index-"
SAVED_SUFFIX = ".faiss"
TEMPORARY_SUFFIX = ".tmp"

# A header line is about 250 bytes; a longer first line is not a header.
MAX_HEADER_BYTES = 4096

# Bytes hashed per update while reading (bounds the extra memory of checking to one chunk).
CHECK_CHUNK_BYTES = 16 << 20


class DamagedIndex(ValueError):
    """The saved file cannot be trusted (the message says why)."""


def index_path(data_dir: Path, model_id: str) -> Path:
    """Where the index of `model_id` is saved in the data folder."""
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return Path(data_dir) / f"{SAVED_PREFIX}{digest}{SAVED_SUFFIX}"


@dataclass(frozen=True)
class SavedIndex:
    index: FaceIndex
    seq: int
    trained_on: int
    other_model_faces: int


def _canonical(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _checksum(header: dict[str, Any], payload: memoryview) -> str:
    digest = hashlib.sha256(_canonical(header))
    digest.update(b"\n")
    for start in range(0, len(payload), CHECK_CHUNK_BYTES):
        digest.update(payload[start : start + CHECK_CHUNK_BYTES])
    return digest.hexdigest()


def save(
    path: Path,
    index: FaceIndex,
    *,
    model_id: str,
    seq: int,
    trained_on: int,
    other_model_faces: int,
) -> bool:
    """Write the index (False when this kind of index cannot be saved now)."""
    data = index.serialize()
    if data is None:
        return False
    payload = memoryview(data).cast("B")
    header: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model_id": model_id,
        "dim": index.dim,
        "kind": index.kind,
        "seq": seq,
        "trained_on": trained_on,
        "other_model_faces": other_model_faces,
        "size": len(index),
        "payload_bytes": len(payload),
    }
    header["sha256"] = _checksum(header, payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600: only the service's user can read the embeddings.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # "being written": see remove_abandoned
            out.write(json.dumps(header).encode() + b"\n")
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
            os.replace(temporary, path)
        _sync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def _sync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable (the rename is in the folder's data, not the file's)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_header(path: Path) -> dict[str, Any]:
    """The header of a saved file (no check of the payload); DamagedIndex if it has none."""
    with path.open("rb") as file:
        return _parse_header(file.readline(MAX_HEADER_BYTES))


def _parse_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError as error:
        raise DamagedIndex(f"unreadable header ({error})") from None
    if not isinstance(header, dict):
        raise DamagedIndex("unreadable header (not an object)")
    return header


def load(path: Path, *, model_id: str, dim: int, use_gpu: bool | None) -> SavedIndex | None:
    """The saved index, or None when there is none or it cannot be trusted (logged)."""
    try:
        return _load(path, model_id=model_id, dim=dim, use_gpu=use_gpu)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:  # RuntimeError: FAISS
        logger.warning("ignoring the saved gallery index %s (rebuilding it): %s", path, error)
        return None


def _load(path: Path, *, model_id: str, dim: int, use_gpu: bool | None) -> SavedIndex:
    with path.open("rb") as file:
        header = _parse_header(file.readline(MAX_HEADER_BYTES))
        if header.get("format") != FORMAT_VERSION:
            raise DamagedIndex(
                f"format {header.get('format')!r}, not {FORMAT_VERSION} (older files carry no "
                "checksum)"
            )
        if header["model_id"] != model_id or header["dim"] != dim:
            raise DamagedIndex(f"made for {header['model_id']} ({header['dim']}-d)")
        expected = int(header["payload_bytes"])
        remaining = os.fstat(file.fileno()).st_size - file.tell()
        if remaining != expected:
            raise DamagedIndex(f"{remaining} bytes of index data, the header says {expected}")
        data = np.empty(expected, np.uint8)
        if file.readinto(memoryview(data)) != expected:
            raise DamagedIndex("the file shrank while it was read")
    claimed = header.pop("sha256", None)
    if claimed != _checksum(header, memoryview(data)):
        raise DamagedIndex(
            "checksum mismatch: the file was changed or damaged after it was written"
        )
    kind: IndexKind = header["kind"]
    index = FaceIndex.deserialize(dim, kind, data, use_gpu=use_gpu)
    if len(index) != header["size"]:
        raise DamagedIndex(f"{len(index)} vectors, header says {header['size']}")
    return SavedIndex(
        index, int(header["seq"]), int(header["trained_on"]), int(header["other_model_faces"])
    )


def discard(path: Path) -> None:
    """Remove a saved index (it may hold embeddings that were just deleted, or be damaged)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def saved_files(data_dir: Path) -> list[Path]:
    """Every model's saved index in the data folder."""
    return sorted(Path(data_dir).glob(f"{SAVED_PREFIX}*{SAVED_SUFFIX}"))


def discard_all(data_dir: Path) -> None:
    """Faces were deleted: remove every model's saved index and every abandoned temporary
    file (any of them may hold the deleted embeddings)."""
    for path in saved_files(data_dir):
        discard(path)
    remove_abandoned(data_dir)


def remove_abandoned(data_dir: Path) -> list[Path]:
    """Remove temporary files that no writer holds (left by a crash while saving); the
    paths removed. A file being written stays: its writer holds a lock on it."""
    removed = []
    for path in Path(data_dir).glob(f"{SAVED_PREFIX}*{SAVED_SUFFIX}*{TEMPORARY_SUFFIX}"):
        try:
            with path.open("rb") as file:
                try:
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed
