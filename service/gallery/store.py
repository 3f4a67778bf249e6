"""The gallery's durable store: the one source of truth for identities and their face embeddings.

The FAISS index is derived from it and can always be rebuilt. `SqliteStore` implements the
`GalleryStore` and `ChangeLog` interfaces (service/gallery/interface.py) on an embedded SQLite
file; service/gallery/milvus.py is the other implementation of `GalleryStore`.

Durability and multi-process rules (SQLite specifics):
- WAL journal with `synchronous=FULL`: a write is on disk (WAL fsynced) when `commit` returns,
  and the route answers 201 only after that.
- Every add or removal of a face appends a row to the `changes` table in the same
  transaction. Its `seq` is an AUTOINCREMENT key, and SQLite runs one write transaction at a
  time, so `seq` order is commit order and a reader never sees a gap that fills in later.
  Each worker process replays `changes` after its last `seq` to keep its own index in step.
- `faces.index_id` (the int64 id in FAISS) is AUTOINCREMENT too: ids of deleted faces are
  never reused, so a stale index entry can never point at a different face.
- `secure_delete=ON` zeroes the pages freed by a deletion, and `erase` checkpoints the WAL
  into the main file and truncates it, so a deleted embedding's bytes are gone from disk.

Failing loudly (docs/deployment.md, "When the gallery's storage fails"):
- Storage errors become `ServiceError`s here, not in routes: a full disk is 507
  `insufficient_storage`, a lock held past the busy timeout 503 `storage_busy`, a read-only,
  missing or unreadable file 503 `gallery_unavailable`; each is counted in
  `faceverify_storage_errors_total{kind}` and reported by `health()` until it clears.
- A database deleted or replaced under the running service would take writes into the unlinked
  file and lose them at the next start. Every write compares the path's (st_dev, st_ino) with the
  file the store opened, before its transaction and after its commit (one stat each), so a
  write is acknowledged only when it is in the file at the path. A different file at the path
  is adopted only when it is this gallery (same `database_id`) with at least as many writes as
  the one it replaces (a backup taken after the last write, put back); anything else keeps
  writes refused until a restart.
- Before the first connection, service/gallery/store_files.py checks the folder (writable,
  0700) and the marker that records the database's id once it holds data: a missing, empty or
  other database where the marker says there was one is refused (`GalleryStoreError`) unless
  `allow_empty` (FACEVERIFY_GALLERY_ALLOW_EMPTY). The store writes the marker on the first
  change it commits.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ErrorCode, ServiceError
from service.gallery.interface import (
    Change,
    ChangesSince,
    ExportedIdentity,
    FaceLabel,
    FaceRecord,
    Identity,
    IdentityEmbeddings,
    NewFace,
    Snapshot,
    new_id,
    utc_now,
)
from service.gallery.sqlite_pool import ConnectionPool
from service.gallery.store_files import (
    DATABASE_MODE,
    DATABASE_NAME,
    MARKER_NAME,
    GalleryStoreError,
    marker_path,
    prepare,
    tighten,
    write_marker,
)

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# How long a connection waits for another process's write lock before answering 503
# `storage_busy` (FACEVERIFY_GALLERY_BUSY_TIMEOUT_S). A write holds it for one fsync (~1-20 ms
# on SSDs); 2 s is far beyond normal contention and well inside the request's own bound
# (FACEVERIFY_GALLERY_TIMEOUT_S, 5 s), so the client hears `storage_busy`, not a timeout.
BUSY_TIMEOUT_S = 2.0

# Retry-After (seconds) of a busy database, and of a database that is gone or unreadable (an
# operator has to act; clients should not hammer it meanwhile).
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNAVAILABLE_S = 10

# Free space under which a disk that answered "full" is still reported full by `health()`:
# about fifty enrolments' journal pages (each writes ~5 pages of 4 KiB).
FULL_DISK_HEADROOM_BYTES = 1 << 20

# How long `health()`'s probe write waits for the write lock: long enough for a normal write
# (one fsync) to finish, short enough for a readiness probe.
HEALTH_PROBE_BUSY_MS = 200

# How long a deletion waits for other connections' reads to end so that it can truncate the
# journal. Past it, the deletion still answers (the data is already zeroed in the database
# pages the journal will be copied over); the next checkpoint finishes the job.
ERASE_CHECKPOINT_WAIT_MS = 2_000

# Idle connections a store keeps for reuse. Requests run in a thread pool (anyio's default
# is 40 threads), but a borrowed connection is held for one short transaction only, so a few
# serve them; a burst wider than this opens extra connections and closes them afterwards.
POOL_IDLE_CONNECTIONS = 8

# Rows fetched per round trip when loading a whole gallery (bounded memory per step).
LOAD_BATCH_ROWS = 10_000

# Embeddings are stored as little-endian float32 bytes, whatever the host's byte order.
EMBEDDING_DTYPE = np.dtype("<f4")


def embedding_to_blob(embedding: np.ndarray) -> bytes:
    return np.ascontiguousarray(embedding, dtype=EMBEDDING_DTYPE).reshape(-1).tobytes()


def blob_to_embedding(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=EMBEDDING_DTYPE).astype(np.float32)


# SQLite primary result codes (https://sqlite.org/rescode.html) and what each means here:
# (kind counted in faceverify_storage_errors_total, error code, Retry-After or None).
_SQLITE_FAILURES: dict[int, tuple[str, ErrorCode, int | None]] = {
    5: ("busy", ErrorCode.STORAGE_BUSY, RETRY_AFTER_BUSY_S),  # SQLITE_BUSY
    6: ("busy", ErrorCode.STORAGE_BUSY, RETRY_AFTER_BUSY_S),  # SQLITE_LOCKED
    8: ("readonly", ErrorCode.GALLERY_UNAVAILABLE, RETRY_AFTER_UNAVAILABLE_S),  # SQLITE_READONLY
    10: ("io", ErrorCode.GALLERY_UNAVAILABLE, RETRY_AFTER_UNAVAILABLE_S),  # SQLITE_IOERR
    11: ("corrupt", ErrorCode.GALLERY_UNAVAILABLE, RETRY_AFTER_UNAVAILABLE_S),  # SQLITE_CORRUPT
    13: ("full", ErrorCode.INSUFFICIENT_STORAGE, None),  # SQLITE_FULL
    14: ("gone", ErrorCode.GALLERY_UNAVAILABLE, RETRY_AFTER_UNAVAILABLE_S),  # SQLITE_CANTOPEN
    26: ("corrupt", ErrorCode.GALLERY_UNAVAILABLE, RETRY_AFTER_UNAVAILABLE_S),  # SQLITE_NOTADB
}

_FAILURE_ADVICE = {
    "busy": "another process holds the gallery database's write lock; retry shortly",
    "readonly": "the gallery database is read-only; make its folder writable",
    "io": "the gallery database's disk reported an I/O error",
    "corrupt": "the gallery database is damaged; restore it from a backup",
    "full": "the disk holding the gallery is full; nothing was written. Free space and retry",
    "gone": "the gallery database is gone or cannot be opened",
}


def _retry_after(seconds: int | None) -> dict[str, str] | None:
    return None if seconds is None else {"Retry-After": str(seconds)}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    index_id INTEGER PRIMARY KEY AUTOINCREMENT,
    face_id TEXT NOT NULL UNIQUE,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    quality REAL NOT NULL,
    det_score REAL NOT NULL,
    image_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_by_identity ON faces(identity_id);
CREATE INDEX IF NOT EXISTS faces_by_model ON faces(model_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    index_id INTEGER NOT NULL,
    model_id TEXT NOT NULL
);
"""

_FACE_COLUMNS = (
    "face_id, index_id, identity_id, model_id, quality, det_score, image_sha256, created_at"
)


def _insert_identities(
    db: sqlite3.Connection, identities: Sequence[tuple[str, str, dict[str, Any]]]
) -> int:
    """Insert the (id, name, metadata) identities not already there; how many were new."""
    now = utc_now()
    before = db.total_changes
    db.executemany(
        "INSERT OR IGNORE INTO identities(id, name, metadata, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(i, name, json.dumps(metadata), now, now) for i, name, metadata in identities],
    )
    return db.total_changes - before


def _identity(row: sqlite3.Row) -> Identity:
    return Identity(
        id=row["id"],
        name=row["name"],
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        face_count=int(row["face_count"]),
    )


_IDENTITY_SELECT = (
    "SELECT i.id, i.name, i.metadata, i.created_at, i.updated_at, "
    "(SELECT count(*) FROM faces f WHERE f.identity_id = i.id) AS face_count FROM identities i"
)


class SqliteStore:
    """`GalleryStore` on one SQLite file; safe for many threads and many processes.

    Connections come from a small pool owned by the store (`service.gallery.sqlite_pool`, at
    most `POOL_IDLE_CONNECTIONS` idle); all are closed by `close`.

    Connections are opened with `mode=rw`: after the store has created its file, a missing file
    is an error (503 `gallery_unavailable`), never a new empty database. One more connection,
    the anchor, stays on the file the store opened, to compare it with a file put back at the
    path (`_adopt`).
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        allow_empty: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = Path(path)
        self._uri = Path(os.path.abspath(self.path)).as_uri() + "?mode=rw"
        self._busy_ms = int(busy_timeout_s * 1000)
        self._metrics = metrics
        # A new generation when a restored file is adopted: older connections close.
        self._pool = ConnectionPool(self._open_connection, POOL_IDLE_CONNECTIONS)
        self._file_lock = threading.Lock()  # serialises adoption and the anchor's use
        # The last storage error (kind, error) until a write succeeds: `health()` reports it
        # meanwhile, unless its check finds it cleared.
        self._failure: tuple[str, ServiceError] | None = None
        recorded = prepare(self.path, allow_empty=allow_empty)
        with suppress(FileExistsError):  # created here with its mode; SQLite's -wal/-shm copy it
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DATABASE_MODE))
        for suffix in ("", "-wal", "-shm"):
            tighten(Path(f"{self.path}{suffix}"), DATABASE_MODE)
        self._file_id = self._path_identity()
        try:
            with self._write(record=False) as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                for key, value in (
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("pruned_through", "0"),
                    ("database_id", uuid.uuid4().hex),
                    ("writes", "0"),
                ):
                    db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            version = int(self._scalar("SELECT value FROM meta WHERE key = 'schema_version'"))
            self.database_id = str(self._scalar("SELECT value FROM meta WHERE key = 'database_id'"))
            holds_data = self._scalar("SELECT 1 FROM identities LIMIT 1") is not None
            self._anchor = self._open_connection()
        except ServiceError as exc:
            self.close()
            raise GalleryStoreError(f"cannot open {self.path}: {exc.message}") from exc
        if version != SCHEMA_VERSION:
            self.close()
            raise RuntimeError(
                f"{self.path} has gallery schema {version}, this service reads {SCHEMA_VERSION}; "
                "use a matching release or migrate the database"
            )
        if recorded is not None and recorded != self.database_id:  # changed since `_prepare`
            self.close()
            raise GalleryStoreError(
                f"{self.path} holds gallery {self.database_id} but {MARKER_NAME} records "
                f"gallery {recorded}; put the right database back, or set "
                "FACEVERIFY_GALLERY_ALLOW_EMPTY=true to use this one"
            )
        self._marked = recorded == self.database_id
        if holds_data:
            self._mark()

    @classmethod
    def in_directory(cls, data_dir: Path, **options: Any) -> SqliteStore:
        return cls(Path(data_dir) / DATABASE_NAME, **options)

    # --- connections and transactions ----------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every one is explicit below.
        db = sqlite3.connect(
            self._uri,
            uri=True,
            timeout=self._busy_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA secure_delete=ON")
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection for one operation (outside any open transaction).

        SQLite's storage errors leave as `ServiceError`s with stable codes (`_storage_error`)."""
        with self._lease() as (db, _):
            yield db

    @contextmanager
    def _lease(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """`_connection`, with the generation of the file the connection is open on."""
        try:
            with self._pool.lease() as leased:
                yield leased
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc

    @contextmanager
    def _write(self, *, record: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front, so two writers
        never deadlock upgrading read locks.

        With `record`, the path is checked to name the store's file before the transaction
        (adopting a file put back there) and again after the commit, so a write is
        acknowledged only when it is in the file the next start opens; a change bumps the
        `writes` counter, and the first change writes the marker."""
        if record:
            self._require_file()
        with self._lease() as (db, generation):
            db.execute("BEGIN IMMEDIATE")
            try:
                if record and generation != self._pool.generation:
                    self._require_file(generation)  # adopted meanwhile: refuse, nothing written
                before = db.total_changes
                yield db
                changed = db.total_changes != before
                if record and changed:
                    db.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'writes'"
                    )
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself after some errors (full)
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        if record:
            self._require_file(generation)
            self._failure = None
            if changed and not self._marked:
                self._mark()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same snapshot."""
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._connection() as db:
            row = db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    # --- failing loudly ------------------------------------------------------------------

    def _storage_error(self, exc: sqlite3.Error, *, count: bool = True) -> Exception:
        """`exc` as a ServiceError with a stable code when it is a storage failure (full, busy,
        read-only, missing, damaged); any other SQLite error is returned unchanged (a bug)."""
        code = getattr(exc, "sqlite_errorcode", None)
        failure = _SQLITE_FAILURES.get(code & 0xFF) if isinstance(code, int) else None
        if failure is None:
            return exc
        kind, error_code, retry_after = failure
        error = ServiceError(
            error_code,
            f"{_FAILURE_ADVICE[kind]} ({self.path.name}: {exc})",
            headers=_retry_after(retry_after),
        )
        if count:
            self._count(kind)
            self._failure = (kind, error)
        return error

    def _count(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.storage_errors.labels(kind).inc()

    def _unavailable(self, message: str, *, count: bool) -> ServiceError:
        if count:
            self._count("gone")
        return ServiceError(
            ErrorCode.GALLERY_UNAVAILABLE,
            message,
            headers=_retry_after(RETRY_AFTER_UNAVAILABLE_S),
        )

    def _path_identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _require_file(self, generation: int | None = None, *, count: bool = True) -> None:
        """Raise 503 `gallery_unavailable` unless the path still names the file this store
        writes to, or a restored copy of it (adopted then). One stat; more only on a change.
        With `generation`, also unless a connection of that generation is open on that file
        (one borrowed before an adoption writes to the replaced file)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._unavailable(
                f"the gallery database {self.path} is gone (deleted or moved) under the "
                "running service; writes are refused until it is put back (a copy of this "
                "gallery taken after its last write) or the service restarts",
                count=count,
            ) from None
        except OSError as exc:
            raise self._unavailable(
                f"the gallery database {self.path} cannot be checked ({exc.strerror})",
                count=count,
            ) from exc
        identity = (st.st_dev, st.st_ino)
        if identity == self._file_id:
            if st.st_size == 0:
                raise self._unavailable(
                    f"the gallery database {self.path} was emptied (0 bytes) under the running "
                    "service; writes are refused: restore it from a backup and restart",
                    count=count,
                )
            reason = None
        else:
            with self._file_lock:
                reason = None if identity == self._file_id else self._adopt(identity)
        if reason is not None:
            raise self._unavailable(
                f"the gallery database {self.path} was replaced by another file ({reason}); "
                "writes are refused until this gallery's file is put back or the service "
                "restarts",
                count=count,
            )
        if generation is not None and generation != self._pool.generation:
            raise self._unavailable(
                f"the gallery database {self.path} was put back while this write ran; retry",
                count=count,
            )

    def _adopt(self, identity: tuple[int, int]) -> str | None:
        """Switch to the file now at the path when it is this gallery with at least every
        write of the file the store had open; else say why not. Caller holds `_file_lock`."""
        try:
            mine = int(
                self._anchor.execute("SELECT value FROM meta WHERE key = 'writes'").fetchone()[0]
            )
            candidate = sqlite3.connect(self._uri, uri=True, timeout=self._busy_ms / 1000)
            try:
                found = dict(
                    candidate.execute(
                        "SELECT key, value FROM meta WHERE key IN ('database_id', 'writes')"
                    ).fetchall()
                )
            finally:
                candidate.close()
        except sqlite3.Error as exc:
            return f"not a readable gallery database: {exc}"
        if found.get("database_id") != self.database_id:
            return f"it is not gallery {self.database_id}"
        theirs = int(found.get("writes", -1))
        if theirs < mine:
            return f"a copy that lacks the last {mine - theirs} of its writes"
        try:
            anchor = self._open_connection()
        except sqlite3.Error as exc:
            return f"it cannot be opened: {exc}"
        stale = self._pool.renew()
        # Connections on the replaced file: SQLite sees it moved and leaves the new -wal alone.
        for db in [*stale, self._anchor]:
            db.close()
        self._anchor, self._file_id = anchor, identity
        log.warning(
            "the gallery database %s was put back (gallery %s, %d writes); writes resume",
            self.path,
            self.database_id,
            theirs,
        )
        return None

    def _mark(self) -> None:
        """Record beside the database that it holds data (see `MARKER_NAME`)."""
        try:
            write_marker(self.path, self.database_id)
        except OSError as exc:  # the data is safe; only the start-up check is weaker
            log.warning("could not write %s: %s", marker_path(self.path), exc)
        else:
            self._marked = True

    def health(self) -> str | None:
        """Why this store cannot take writes now, in one line; None when it can. Cheap: one
        stat of the database file; while a storage error is open, a look at the free space
        (full disk) or a probe write (anything else) to see whether it has cleared."""
        try:
            self._require_file(count=False)
            failure = self._failure
            if failure is not None and failure[0] == "full":
                self._require_space(failure[1])
            elif failure is not None:
                self._probe_write()
        except ServiceError as exc:
            return exc.message
        except sqlite3.Error as exc:
            return f"the gallery database {self.path} fails: {exc}"
        return None

    def _require_space(self, error: ServiceError) -> None:
        """Raise `error` again while the disk is still short of space. (A probe write can fit
        in journal pages a failed write left allocated, and pass on a full disk.)"""
        try:
            stats = os.statvfs(self.path.parent)
        except OSError:
            raise error from None
        if stats.f_bavail * stats.f_frsize < FULL_DISK_HEADROOM_BYTES:
            raise error
        self._failure = None

    def _probe_write(self) -> None:
        """Commit a write that changes nothing (it still appends to the journal and syncs)."""
        try:
            db = sqlite3.connect(self._uri, uri=True, timeout=HEALTH_PROBE_BUSY_MS / 1000)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise self._storage_error(exc, count=False) from exc
        self._failure = None

    # --- identities ----------------------------------------------------------------------

    def create_identity(
        self, name: str, metadata: dict[str, Any], identity_id: str | None = None
    ) -> Identity | None:
        now = utc_now()
        identity = Identity(identity_id or new_id(), name, dict(metadata), now, now, 0)
        with self._write() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO identities(id, name, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (identity.id, name, json.dumps(metadata), now, now),
            ).rowcount
        return identity if inserted else None

    def create_identities(self, identities: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        with self._write() as db:
            return _insert_identities(db, identities)

    def get_identity(self, identity_id: str) -> Identity | None:
        with self._connection() as db:
            row = db.execute(_IDENTITY_SELECT + " WHERE i.id = ?", (identity_id,)).fetchone()
        return None if row is None else _identity(row)

    def list_identities(self, limit: int, offset: int) -> list[Identity]:
        with self._connection() as db:
            rows = db.execute(
                _IDENTITY_SELECT + " ORDER BY i.rowid LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_identity(row) for row in rows]

    def update_identity(
        self, identity_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Identity | None:
        with self._write() as db:
            row = db.execute("SELECT name, metadata FROM identities WHERE id = ?", (identity_id,))
            current = row.fetchone()
            if current is None:
                return None
            db.execute(
                "UPDATE identities SET name = ?, metadata = ?, updated_at = ? WHERE id = ?",
                (
                    current["name"] if name is None else name,
                    current["metadata"] if metadata is None else json.dumps(metadata),
                    utc_now(),
                    identity_id,
                ),
            )
        return self.get_identity(identity_id)

    def delete_identity(self, identity_id: str) -> list[int] | None:
        with self._write() as db:
            if (
                db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone()
                is None
            ):
                return None
            rows = db.execute(
                "SELECT index_id, model_id FROM faces WHERE identity_id = ? ORDER BY index_id",
                (identity_id,),
            ).fetchall()
            db.executemany(
                "INSERT INTO changes(op, index_id, model_id) VALUES ('remove', ?, ?)",
                [(row[0], row[1]) for row in rows],
            )
            db.execute("DELETE FROM faces WHERE identity_id = ?", (identity_id,))
            db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
        return [int(row[0]) for row in rows]

    def counts(self) -> tuple[int, int]:
        with self._read() as db:
            identities = db.execute("SELECT count(*) FROM identities").fetchone()[0]
            faces = db.execute("SELECT count(*) FROM faces").fetchone()[0]
        return int(identities), int(faces)

    # --- faces ---------------------------------------------------------------------------

    def add_face(self, face: NewFace) -> FaceRecord | None:
        with self._write() as db:
            return self._insert_face(db, face)

    def add_faces(self, faces: Sequence[NewFace]) -> int:
        """One transaction (one fsync) for the whole batch: imports run at thousands of faces
        per second where one transaction per face would wait for a disk flush each."""
        with self._write() as db:
            return sum(self._insert_face(db, face) is not None for face in faces)

    def import_batch(
        self,
        identities: Sequence[tuple[str, str, dict[str, Any]]],
        faces: Sequence[NewFace],
    ) -> tuple[int, int]:
        """Identities and their faces in one transaction: all of it is stored, or none."""
        with self._write() as db:
            created = _insert_identities(db, identities)
            stored = sum(self._insert_face(db, face) is not None for face in faces)
        return created, stored

    def _insert_face(self, db: sqlite3.Connection, face: NewFace) -> FaceRecord | None:
        """Insert a face inside the caller's write transaction; None if its identity is gone
        or its given `face_id` is already stored."""
        embedding = np.asarray(face.embedding, dtype=np.float32).reshape(-1)
        face_id, now = face.face_id or new_id(), utc_now()
        exists = db.execute("SELECT 1 FROM identities WHERE id = ?", (face.identity_id,))
        if exists.fetchone() is None:
            return None
        cursor = db.execute(
            "INSERT OR IGNORE INTO faces(face_id, identity_id, model_id, dim, embedding, "
            "quality, det_score, image_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                face_id,
                face.identity_id,
                face.model_id,
                embedding.size,
                embedding_to_blob(embedding),
                float(face.quality),
                float(face.det_score),
                face.image_sha256,
                now,
            ),
        )
        if not cursor.rowcount:
            return None
        index_id = int(cursor.lastrowid or 0)
        db.execute(
            "INSERT INTO changes(op, index_id, model_id) VALUES ('add', ?, ?)",
            (index_id, face.model_id),
        )
        return FaceRecord(
            face_id=face_id,
            index_id=index_id,
            identity_id=face.identity_id,
            model_id=face.model_id,
            quality=float(face.quality),
            det_score=float(face.det_score),
            image_sha256=face.image_sha256,
            created_at=now,
        )

    def delete_face(self, identity_id: str, face_id: str) -> int | None:
        with self._write() as db:
            row = db.execute(
                "SELECT index_id, model_id FROM faces WHERE face_id = ? AND identity_id = ?",
                (face_id, identity_id),
            ).fetchone()
            if row is None:
                return None
            index_id = int(row[0])
            db.execute(
                "INSERT INTO changes(op, index_id, model_id) VALUES ('remove', ?, ?)",
                (index_id, row[1]),
            )
            db.execute("DELETE FROM faces WHERE index_id = ?", (index_id,))
        return index_id

    def faces_of(self, identity_id: str) -> list[FaceRecord]:
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_FACE_COLUMNS} FROM faces WHERE identity_id = ? ORDER BY index_id",
                (identity_id,),
            ).fetchall()
        return [FaceRecord.from_row(row) for row in rows]

    def embeddings_of(self, identity_id: str, model_id: str) -> tuple[list[FaceRecord], np.ndarray]:
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_FACE_COLUMNS}, embedding FROM faces "
                "WHERE identity_id = ? AND model_id = ? ORDER BY index_id",
                (identity_id, model_id),
            ).fetchall()
        faces = [FaceRecord.from_row(row) for row in rows]
        if not rows:
            return faces, np.zeros((0, 0), np.float32)
        return faces, np.stack([blob_to_embedding(row["embedding"]) for row in rows])

    def identity_embeddings(self, identity_id: str, model_id: str) -> IdentityEmbeddings | None:
        with self._read() as db:
            row = db.execute(_IDENTITY_SELECT + " WHERE i.id = ?", (identity_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute(
                f"SELECT {_FACE_COLUMNS}, embedding FROM faces "
                "WHERE identity_id = ? AND model_id = ? ORDER BY index_id",
                (identity_id, model_id),
            ).fetchall()
        embeddings = (
            np.stack([blob_to_embedding(r["embedding"]) for r in rows])
            if rows
            else np.zeros((0, 0), np.float32)
        )
        return IdentityEmbeddings(
            _identity(row), [FaceRecord.from_row(r) for r in rows], embeddings
        )

    def export(self, batch_size: int = LOAD_BATCH_ROWS) -> Iterator[ExportedIdentity]:
        """Streams identities in creation order, each with its faces (one read snapshot)."""
        with self._read() as db:
            identities = db.execute(_IDENTITY_SELECT + " ORDER BY i.rowid")
            columns = ", ".join(f"f.{name.strip()}" for name in _FACE_COLUMNS.split(","))
            faces = db.execute(
                f"SELECT {columns}, f.embedding FROM faces f "
                "JOIN identities i ON i.id = f.identity_id ORDER BY i.rowid, f.index_id"
            )
            pending: list[sqlite3.Row] = []
            while rows := identities.fetchmany(batch_size):
                for row in rows:
                    identity = _identity(row)
                    mine: list[sqlite3.Row] = []
                    while len(mine) < identity.face_count:
                        if not pending:
                            pending = faces.fetchmany(batch_size)[::-1]
                        mine.append(pending.pop())
                    yield ExportedIdentity(
                        identity,
                        [FaceRecord.from_row(face) for face in mine],
                        [blob_to_embedding(face["embedding"]) for face in mine],
                    )

    def labels(self, index_ids: Sequence[int]) -> dict[int, FaceLabel]:
        wanted = sorted({int(i) for i in index_ids})
        if not wanted:
            return {}
        # One query per chunk, well under SQLite's limit on bound parameters (999 before 3.32).
        chunk = 500
        found: dict[int, FaceLabel] = {}
        with self._read() as db:
            for start in range(0, len(wanted), chunk):
                part = wanted[start : start + chunk]
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    "SELECT f.index_id, f.face_id, f.identity_id, i.name FROM faces f "
                    f"JOIN identities i ON i.id = f.identity_id WHERE f.index_id IN ({marks})",
                    part,
                )
                for row in rows:
                    found[int(row[0])] = FaceLabel(int(row[0]), row[1], row[2], row[3])
        return found

    def embeddings_by_index_id(
        self, index_ids: Sequence[int], model_id: str
    ) -> dict[int, np.ndarray]:
        """The stored embedding of each of `index_ids` made by `model_id` (for checks of a
        saved index; looked up by primary key, so a few hundred cost milliseconds)."""
        wanted = sorted({int(i) for i in index_ids})
        found: dict[int, np.ndarray] = {}
        with self._read() as db:
            for start in range(0, len(wanted), 500):  # bound parameters, as in `labels`
                part = wanted[start : start + 500]
                rows = db.execute(
                    "SELECT index_id, model_id, embedding FROM faces "
                    f"WHERE index_id IN ({','.join('?' * len(part))})",
                    part,
                )
                found.update(
                    (int(row[0]), blob_to_embedding(row[2])) for row in rows if row[1] == model_id
                )
        return found

    def faces_per_model(self) -> dict[str, int]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT model_id, count(*) FROM faces GROUP BY model_id ORDER BY model_id"
            ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    # --- change log ----------------------------------------------------------------------

    def last_seq(self) -> int:
        return int(self._scalar("SELECT coalesce(max(seq), 0) FROM changes"))

    def snapshot(self, model_id: str) -> Snapshot:
        with self._read() as db:
            seq = int(db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
            dims = db.execute(
                "SELECT DISTINCT dim FROM faces WHERE model_id = ?", (model_id,)
            ).fetchall()
            if len(dims) > 1:
                raise RuntimeError(
                    f"faces of model {model_id} have several embedding sizes "
                    f"{sorted(d[0] for d in dims)}; the gallery database is corrupt"
                )
            total = int(
                db.execute("SELECT count(*) FROM faces WHERE model_id = ?", (model_id,)).fetchone()[
                    0
                ]
            )
            dim = int(dims[0][0]) if dims else 0
            index_ids = np.empty(total, np.int64)
            embeddings = np.empty((total, dim), np.float32)
            cursor = db.execute(
                "SELECT index_id, embedding FROM faces WHERE model_id = ? ORDER BY index_id",
                (model_id,),
            )
            filled = 0
            while rows := cursor.fetchmany(LOAD_BATCH_ROWS):
                for row in rows:
                    index_ids[filled] = row[0]
                    embeddings[filled] = np.frombuffer(row[1], dtype=EMBEDDING_DTYPE)
                    filled += 1
            others = db.execute(
                "SELECT count(*) FROM faces WHERE model_id != ?", (model_id,)
            ).fetchone()[0]
        return Snapshot(seq, index_ids, embeddings, int(others))

    def changes_since(self, seq: int, model_id: str) -> ChangesSince:
        with self._read() as db:
            pruned = int(
                db.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()[0]
            )
            if seq < pruned:
                return ChangesSince(complete=False)
            rows = db.execute(
                "SELECT c.seq, c.op, c.index_id, c.model_id, f.embedding FROM changes c "
                "LEFT JOIN faces f ON f.index_id = c.index_id AND c.op = 'add' "
                "WHERE c.seq > ? ORDER BY c.seq",
                (seq,),
            ).fetchall()
        changes = []
        for row in rows:
            embedding = None
            if row["embedding"] is not None and row["model_id"] == model_id:
                embedding = blob_to_embedding(row["embedding"])
            changes.append(
                Change(int(row["seq"]), row["op"], int(row["index_id"]), row["model_id"], embedding)
            )
        return ChangesSince(changes)

    def prune_changes(self, keep_last: int) -> int:
        """Drop all but the last `keep_last` change-log rows; workers that had not read them
        rebuild their index from the store. Returns how many rows were removed."""
        with self._write() as db:
            last = int(db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
            through = max(last - keep_last, 0)
            removed = db.execute("DELETE FROM changes WHERE seq <= ?", (through,)).rowcount
            db.execute(
                "UPDATE meta SET value = ? "
                "WHERE key = 'pruned_through' AND CAST(value AS INTEGER) < ?",
                (str(through), through),
            )
        return int(removed)

    # --- erasure and shutdown ------------------------------------------------------------

    def erase(self) -> bool:
        """Copy the WAL (which holds the zeroed pages) into the database and truncate it.

        Returns False when another connection's open read transaction kept part of the WAL
        alive; the next successful checkpoint (any later deletion, or shutdown) finishes it.
        """
        with self._connection() as db:
            db.execute(f"PRAGMA busy_timeout={ERASE_CHECKPOINT_WAIT_MS}")
            try:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return busy == 0

    def close(self) -> None:
        connections = self._pool.close()
        anchor = getattr(self, "_anchor", None)
        if anchor is not None:
            connections.append(anchor)
        if connections:
            # Fold the WAL into the database so that a stopped service leaves one tidy file.
            # (On a file deleted or replaced meanwhile SQLite writes only into the old file.)
            with suppress(sqlite3.Error):
                connections[0].execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for db in connections:
            db.close()
