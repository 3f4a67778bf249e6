"""File checksums of packs, and the one-line form of a pack file's validation error."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ValidationError

# Read files in 1 MiB chunks when hashing: a 170 MB recognizer hashes in ~0.1 s, in constant memory.
HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in `HASH_CHUNK_BYTES` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"]) or "document"
    return f"{location}: {error['msg']}"
