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
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.interface import (
    Change,
    ChangesSince,
    ExportedIdentity,
    FaceLabel,
    FaceRecord,
    GalleryStore,
    Identity,
    IdentityEmbeddings,
    NewFace,
    Snapshot,
    new_id,
    utc_now,
)

# Names of the interface re-exported where they were first defined (older imports keep working).
__all__ = [
    "Change",
    "ChangesSince",
    "ExportedIdentity",
    "FaceLabel",
    "FaceRecord",
    "GalleryStore",
    "Identity",
    "IdentityEmbeddings",
    "NewFace",
    "Snapshot",
    "SqliteStore",
]

DATABASE_NAME = "gallery.sqlite3"
SCHEMA_VERSION = 1

# How long a connection waits for another process's write lock before failing. A write holds
# it for one fsync (~1-20 ms on SSDs); 30 s only matters under pathological contention.
BUSY_TIMEOUT_MS = 30_000

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

    Connections come from a small pool owned by the store: an operation borrows one (SQLite
    connections must not be used by two threads at once) and gives it back when done. At most
    `POOL_IDLE_CONNECTIONS` idle connections are kept; one borrowed beyond that (a burst wider
    than the pool) is closed on return. So the open handles on the database file are bounded by
    the store, not by how many threads the server has created over its life (anyio retires idle
    worker threads and makes new ones, which leaked one connection each when they were
    per-thread). All are closed by `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('pruned_through', '0')")
        version = int(self._scalar("SELECT value FROM meta WHERE key = 'schema_version'"))
        if version != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has gallery schema {version}, this service reads {SCHEMA_VERSION}; "
                "use a matching release or migrate the database"
            )

    @classmethod
    def in_directory(cls, data_dir: Path) -> SqliteStore:
        return cls(Path(data_dir) / DATABASE_NAME)

    # --- connections and transactions ----------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every one is explicit below.
        db = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA secure_delete=ON")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection for one operation (outside any open transaction)."""
        with self._pool_lock:
            if self._closed:
                raise RuntimeError("the gallery store is closed")
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open_connection()
        try:
            yield db
        finally:
            if db.in_transaction:  # an interrupted statement: never hand on an open transaction
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            with self._pool_lock:
                keep = not self._closed and len(self._idle) < POOL_IDLE_CONNECTIONS
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front, so two writers
        never deadlock upgrading read locks."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same snapshot."""
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._connection() as db:
            row = db.execute(sql, params).fetchone()
        return None if row is None else row[0]

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
        now = utc_now()
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO identities(id, name, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i, name, json.dumps(metadata), now, now) for i, name, metadata in identities],
            )
            return db.total_changes - before

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
        now = utc_now()
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO identities(id, name, metadata, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i, name, json.dumps(metadata), now, now) for i, name, metadata in identities],
            )
            created = db.total_changes - before
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
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return busy == 0

    def close(self) -> None:
        with self._pool_lock:
            connections, self._idle = self._idle, []
            self._closed = True
        if not connections:
            with suppress(sqlite3.Error):
                connections = [self._open_connection()]
        if connections:
            # Fold the WAL into the database so that a stopped service leaves one tidy file.
            with suppress(sqlite3.Error):
                connections[0].execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for db in connections:
            db.close()
