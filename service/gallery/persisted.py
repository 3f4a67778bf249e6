"""The embedded backend's index saved next to the database, so a worker starts in seconds.

Building a worker's FAISS index from SQLite took 117 s at 1 M x 128-d faces on 2 loaded cores
(bench/gallery_backends.py; docs/gallery.md): every worker of every restart paid it. A worker
that built its index at start-up saves it here with the change-log `seq` it reflects; the next
worker to start loads it, checks it (same model and size, the change log still holds
everything after that `seq`), replays the changes since, and checks the face count against
the store; any doubt and it rebuilds from the store as before.

One file per model, written to a temporary name and renamed (atomic): a reader never sees a
half-written file, and concurrent writers leave one whole file. It holds embeddings, so a
deletion removes it (`discard`), and a writer that finds a removal logged after its snapshot
removes what it wrote: no deleted embedding stays in it after the deletion's answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.gallery.index import FaceIndex, IndexKind

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def index_path(data_dir: Path, model_id: str) -> Path:
    """Where the index of `model_id` is saved in the data folder."""
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:16]
    return Path(data_dir) / f"index-{digest}.faiss"


@dataclass(frozen=True)
class SavedIndex:
    index: FaceIndex
    seq: int
    trained_on: int
    other_model_faces: int


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
    header = {
        "format": FORMAT_VERSION,
        "model_id": model_id,
        "dim": index.dim,
        "kind": index.kind,
        "seq": seq,
        "trained_on": trained_on,
        "other_model_faces": other_model_faces,
        "size": len(index),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(json.dumps(header).encode() + b"\n")
            out.write(memoryview(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def load(path: Path, *, model_id: str, dim: int, use_gpu: bool | None) -> SavedIndex | None:
    """The saved index, or None when there is none or it does not fit (logged)."""
    try:
        with path.open("rb") as file:
            header = json.loads(file.readline())
            data = np.frombuffer(file.read(), dtype=np.uint8)
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {header.get('format')}")
        if header["model_id"] != model_id or header["dim"] != dim:
            raise ValueError(f"made for {header['model_id']} ({header['dim']}-d)")
        kind: IndexKind = header["kind"]
        index = FaceIndex.deserialize(dim, kind, data, use_gpu=use_gpu)
        if len(index) != header["size"]:
            raise ValueError(f"{len(index)} vectors, header says {header['size']}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # RuntimeError: FAISS
        logger.warning("ignoring the saved gallery index %s: %s", path, error)
        return None
    return SavedIndex(
        index, int(header["seq"]), int(header["trained_on"]), int(header["other_model_faces"])
    )


def discard(path: Path) -> None:
    """Remove the saved index (it holds embeddings that were just deleted)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
