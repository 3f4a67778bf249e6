"""The embedded gallery's files on disk, apart from what SQLite does inside them.

Why a module of its own: these checks run before any SQLite connection exists, in
`python -m service` (to exit non-zero with one line) and when `SqliteStore` opens.
- The data folder is kept 0700 and the database 0600 (faces are biometric data); wider modes
  left by older releases are tightened, with a warning.
- The folder must be writable (a real write: `os.access` says yes to root on a read-only
  mount).
- `MARKER_NAME` beside the database records its `database_id` once it holds data, so that a
  database missing, emptied or swapped for another while the service was stopped is refused
  instead of silently starting an empty gallery (unless FACEVERIFY_GALLERY_ALLOW_EMPTY).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE_NAME = "gallery.sqlite3"
# Written beside the database once it holds data; not named `gallery.sqlite3*` so that removing
# the database and its -wal/-shm files leaves it, and the next start-up notices the loss.
MARKER_NAME = "gallery-marker.json"

# Modes of the data folder and the database files: faces are biometric data.
DATA_DIR_MODE = 0o700
DATABASE_MODE = 0o600


class GalleryStoreError(Exception):
    """The gallery database cannot be opened as it is: read-only, or missing or empty where a
    previous run stored data. Raised at start-up; `python -m service` prints it as one line and
    exits non-zero, and /readyz answers 503 with it."""


def marker_path(path: Path) -> Path:
    return path.parent / MARKER_NAME


def read_marker(path: Path) -> str | None:
    """The database id the marker beside `path` records, or None when there is no marker."""
    try:
        return str(json.loads(marker_path(path).read_text())["database_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalleryStoreError(
            f"{marker_path(path)} is unreadable ({exc}); it records that {path} held data. "
            "Restore it, or set FACEVERIFY_GALLERY_ALLOW_EMPTY=true to start an empty gallery"
        ) from exc


def write_marker(path: Path, database_id: str) -> None:
    """Atomically (temporary file + rename), mode 0600."""
    marker = marker_path(path)
    fd, temporary = tempfile.mkstemp(dir=marker.parent, prefix=f".{MARKER_NAME}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"database": path.name, "database_id": database_id}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, marker)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


def tighten(path: Path, mode: int) -> None:
    """chmod `path` to `mode` when it allows more; logged, never fatal (another owner, a
    read-only mount: the check for writability says what matters)."""
    try:
        current = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if current & ~mode:
        try:
            path.chmod(mode)
        except OSError as exc:
            log.warning("could not tighten %s from %o to %o: %s", path, current, mode, exc)
        else:
            log.warning("tightened %s from mode %o to %o (gallery data)", path, current, mode)


def check_data_dir(data_dir: Path, *, allow_empty: bool = False) -> None:
    """What `python -m service` checks before serving an embedded gallery (and the store when
    it opens): the folder exists (0700) and is writable, and the database is not missing or
    empty where the marker says a previous run stored data. Raises `GalleryStoreError`."""
    prepare(Path(data_dir) / DATABASE_NAME, allow_empty=allow_empty)


def prepare(path: Path, *, allow_empty: bool) -> str | None:
    """Create and tighten the folder, check it is writable and the database is where the
    marker says; returns the marker's database id (None: no marker, or starting fresh)."""
    folder = path.parent
    try:
        folder.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise GalleryStoreError(
            f"cannot create the gallery data folder {folder} ({exc.strerror}); "
            "check FACEVERIFY_DATA_DIR and its parent's permissions"
        ) from exc
    tighten(folder, DATA_DIR_MODE)
    try:  # a real write: os.access says yes to root on a read-only mount
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as exc:
        raise GalleryStoreError(
            f"the gallery data folder {folder} is read-only ({exc.strerror}); the service "
            "must write its database there: mount it writable or point FACEVERIFY_DATA_DIR "
            "elsewhere"
        ) from exc
    recorded = read_marker(path)
    if recorded is None:
        return None
    size = path.stat().st_size if path.exists() else None
    found = database_id_of(path) if size else None
    if found == recorded:
        return recorded
    if size is None:
        state = "missing"
    elif not size:
        state = "empty (0 bytes)"
    else:
        state = f"another gallery ({found or 'no gallery id'})"
    if allow_empty:
        log.warning(
            "%s is %s where %s records data (gallery %s); opening it as it is, as "
            "FACEVERIFY_GALLERY_ALLOW_EMPTY says",
            path,
            state,
            MARKER_NAME,
            recorded,
        )
        marker_path(path).unlink(missing_ok=True)
        return None
    raise GalleryStoreError(
        f"{path} is {state} but {marker_path(path).name} records that it held gallery "
        f"{recorded}; restore the database from a backup, or set "
        "FACEVERIFY_GALLERY_ALLOW_EMPTY=true to start an empty gallery"
    )


def database_id_of(path: Path) -> str | None:
    """The `database_id` in the database at `path` (None: none, or not a gallery database)."""
    try:
        db = sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=rw", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])
