"""The gallery in Milvus: identities, faces and the search shared by every replica.

Chosen by `FACEVERIFY_GALLERY_BACKEND=milvus`; the embedded SQLite + FAISS backend stays the
default. Everything goes through pymilvus's `MilvusClient`, so the same code talks to Milvus
Standalone, Distributed, or a milvus-lite server (the tests use the latter).

Schema (collection names start with `FACEVERIFY_MILVUS_COLLECTION_PREFIX`, here `p`):
- `p_identities`: `id` VARCHAR primary key, `name` VARCHAR, `metadata` VARCHAR (JSON text, kept
  verbatim), `created_at`/`updated_at` VARCHAR (ISO 8601), `created_ns` INT64 (creation order
  for paging), and `unused` FLOAT_VECTOR(2) (Milvus requires a vector field in every collection).
- `p_faces_<d>`: one collection per embedding size `d` (a vector field has one size, and
  galleries can hold faces of models of different sizes): `index_id` INT64 primary key (63
  bits of the sha256 of `face_id`, unique across collections), `face_id`, `identity_id`,
  `model_id`, `image_sha256`, `created_at` VARCHAR, `quality`, `det_score` FLOAT, `embedding`
  FLOAT_VECTOR(d) with a FLAT index on inner product (exact, like the embedded flat index).
Every collection uses Strong consistency: a read or search sees every write acknowledged
before it, through any replica.

Milvus has no transactions across collections. Writes are ordered so that a crash between two
of them leaves nothing searchable that the API said was gone: a delete removes faces, then the
identity, then sweeps faces again (a face added concurrently); a face insert re-checks its
identity afterwards and removes itself if the identity was deleted meanwhile.

Erasure: Milvus marks deleted rows with delete logs at once (Strong reads and searches never
return them); the bytes stay in the sealed segment files until a compaction rewrites those
segments, and the old files are removed from object storage by Milvus's garbage collector after
`dataCoord.gc.dropTolerance` (see docs/gallery.md). After a delete this backend flushes and
requests a compaction of the collections it touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from service.errors import ErrorCode, ServiceError
from service.gallery.interface import (
    ExportedIdentity,
    FaceLabel,
    FaceRecord,
    Identity,
    IdentityEmbeddings,
    IndexState,
    NewFace,
    SearchResult,
    new_id,
    utc_now,
)

logger = logging.getLogger(__name__)


def _quiet_pymilvus() -> None:
    """Log levels of pymilvus's loggers; set after pymilvus is imported, since its import
    configures its loggers (and resets those set before).

    pymilvus warns at every query iterator that a milvus-lite server does not report an MVCC
    timestamp (it then uses the client's clock, which Strong consistency makes harmless). And
    it logs every failed call at ERROR with its full traceback (about 15 KB, more when it also
    tried to reconnect): this module logs each failure once, in one line, and answers it with
    `gallery_unavailable`."""
    import pymilvus  # noqa: F401  (configures its loggers)

    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    for noisy in ("pymilvus.decorators", "pymilvus.client.connection_manager"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


# Milvus's limits on one request: `topk` of a search and `offset + limit` of a query
# (proxy.maxResultWindow / the 16384 cap of Milvus 2.x).
MAX_RESULT_WINDOW = 16_384
# Rows per insert request and per `in [...]` filter: well under Milvus's 64 MB gRPC messages.
WRITE_BATCH_ROWS = 1_000
FILTER_BATCH_IDS = 1_000
# Strings: identity names and metadata are bounded at the HTTP edge (service/api/
# schemas_gallery.py: metadata at most 16 KB of JSON); these are Milvus's own column sizes.
ID_LENGTH = 128
NAME_LENGTH = 4_096
METADATA_LENGTH = 65_535
MODEL_LENGTH = 256
SHA256_LENGTH = 64  # hex digits
UNUSED_VECTOR_DIM = 2
# gRPC keepalive of the connection. pymilvus pings every 10 s even while idle; a server with
# gRPC's default ping policy (milvus-lite: at most one ping per 5 min without calls) answers an
# idle client with GOAWAY "too many pings", and pymilvus then fails the next request. Pinging
# only during calls, at the servers' minimum interval, avoids that; a broken connection is
# still detected by the next request (gRPC reconnects). Each store has its own connection
# (`dedicated`), so one cannot inherit a connection another client let die.
GRPC_KEEPALIVE = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_permit_without_calls", False),
)
# Face columns returned by reads (the embedding only where needed: it is the bulk of a row).
FACE_FIELDS = (
    "index_id",
    "face_id",
    "identity_id",
    "model_id",
    "quality",
    "det_score",
    "image_sha256",
    "created_at",
)


# Bounds of one call to Milvus: each request (the default of `FACEVERIFY_GALLERY_TIMEOUT_S`), and
# the pause between two attempts to connect after a failed one (doubling from the first to the
# last, so that a Milvus that is back is found within seconds, and one that stays down is not
# hammered).
DEFAULT_TIMEOUT_S = 5.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 5.0
# Milvus's status codes (milvus-proto common.ErrorCode / pymilvus ErrorCode) this backend acts
# on: it could not reach the server (2); the collection is not loaded (101: a restarted Milvus
# leaves every collection released until someone loads it again).
CONNECT_FAILED = 2
COLLECTION_NOT_LOADED = 101
# The MilvusClient methods that send requests: each one gets the timeout and the error mapping.
RPC_METHODS = frozenset(
    {
        "compact",
        "create_collection",
        "delete",
        "flush",
        "get_load_state",
        "has_collection",
        "insert",
        "list_collections",
        "load_collection",
        "query",
        "query_iterator",
        "search",
        "upsert",
    }
)


def _unreachable(exc: BaseException) -> bool:
    """Whether a failed call means Milvus could not be reached or did not answer in time (try
    again later), rather than a request it refused."""
    import grpc
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        )
    if isinstance(exc, MilvusException):
        text = str(exc.message).lower()
        return exc.code == CONNECT_FAILED or "timeout" in text or "deadline" in text
    return isinstance(exc, TimeoutError | ConnectionError)


def _not_loaded(exc: BaseException) -> bool:
    from pymilvus.exceptions import MilvusException

    return isinstance(exc, MilvusException) and (
        exc.code == COLLECTION_NOT_LOADED or "call load()" in str(exc.message)
    )


def _one_line(exc: BaseException) -> str:
    """A failure in one short line: gRPC errors carry a multi-line debug string."""
    import grpc

    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        text = f"{exc.code().name}: {exc.details()}"
    else:
        text = str(getattr(exc, "message", None) or exc)
    return " ".join(text.split())[:300]


class _BoundedClient:
    """The `MilvusClient` as the store uses it: every request through `MilvusStore._call`."""

    def __init__(self, store: MilvusStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in RPC_METHODS:
            return lambda *args, **kwargs: self._store._call(name, *args, **kwargs)
        return getattr(self._store._connected(), name)


def _is_backend_error(exc: BaseException) -> bool:
    """An error raised by pymilvus or gRPC (as opposed to a bug of ours)."""
    import grpc
    from pymilvus.exceptions import MilvusException

    return isinstance(exc, MilvusException | grpc.RpcError | TimeoutError | ConnectionError)


def face_key(face_id: str) -> int:
    """A face's primary key: 63 bits of the sha256 of its id. Unique in practice (ids are
    random uuids, or unique per import file), and the same for the same id, so checking
    whether an imported face is already stored is a primary-key lookup."""
    return int.from_bytes(hashlib.sha256(face_id.encode()).digest()[:8], "big") >> 1


def _quote(value: str) -> str:
    """A string literal for a Milvus filter expression. Milvus's parser takes UTF-8 text and
    the escapes `\\` and `\"` but refuses `\\uXXXX` (which `json.dumps` writes for every
    non-ASCII character), so only those two are escaped; control characters have no literal at
    all and are refused here (ids never hold them: `ID_PATTERN` in interface.py)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) < 0xE000 for c in value):
        raise ServiceError(
            ErrorCode.VALIDATION_ERROR, f"{value!r} holds characters no id or model name may hold"
        )
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _in(field: str, values: Sequence[Any]) -> str:
    literals = [_quote(v) if isinstance(v, str) else str(int(v)) for v in values]
    return f"{field} in [{', '.join(literals)}]"


class MilvusStore:
    """`GalleryStore` in Milvus collections (see the module docstring for the schema)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        prefix: str = "faceverify",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect: bool = True,
    ) -> None:
        """With `connect=False` nothing is sent yet: the first call (or `ping`) connects, so a
        service can start while Milvus is down and become ready when it is up."""
        _quiet_pymilvus()
        self.uri = uri
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.identities = f"{prefix}_identities"
        self._token = token
        self._known_faces: set[str] = set()
        self._raw: Any = None  # the connected MilvusClient
        self._closed = False
        self._connecting = threading.Lock()
        self._next_attempt = 0.0
        self._pause_s = RECONNECT_FIRST_S
        self.client = _BoundedClient(self)
        if connect:
            self._connected()

    # --- connection ----------------------------------------------------------------------

    def _unavailable(self, what: str, exc: BaseException | None = None) -> ServiceError:
        """`gallery_unavailable` for a call that failed (`exc`), or that was not sent (not
        connected yet: `what` says why), logged once in one line."""
        if exc is None:  # the failed connection attempt was logged as a warning already
            reason = what
            logger.info("Milvus at %s unavailable: %s", self.uri, reason)
        elif not _unreachable(exc):
            reason = _one_line(exc)
            logger.warning("Milvus refused %s: %s", what, reason)
            return ServiceError(
                ErrorCode.GALLERY_UNAVAILABLE,
                f"the gallery database refused the request ({reason})",
            )
        else:
            reason = _one_line(exc)
            logger.warning("Milvus at %s unavailable (%s): %s", self.uri, what, reason)
        retry_after = max(1, math.ceil(min(self.timeout_s, RECONNECT_MAX_S)))
        return ServiceError(
            ErrorCode.GALLERY_UNAVAILABLE,
            f"the gallery database is unavailable ({reason}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def _connected(self) -> Any:
        """The connected client; connects first if needed, at most once per pause (doubling
        after each failure) so that calls during an outage fail at once instead of each one
        waiting for a connection timeout. pymilvus reconnects a client that was connected by
        itself (a restarted server at the same address is found at the next call)."""
        if self._raw is not None:
            return self._raw
        with self._connecting:
            if self._raw is not None:
                return self._raw
            if self._closed:
                raise self._unavailable("the gallery is closed")
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                raise self._unavailable(f"not connected; next attempt in {wait:.1f} s")
            try:
                self._raw = self._connect()
            except Exception as exc:
                self._next_attempt = time.monotonic() + self._pause_s
                self._pause_s = min(self._pause_s * 2, RECONNECT_MAX_S)
                if _is_backend_error(exc):
                    raise self._unavailable("connect", exc) from None
                raise
            self._pause_s = RECONNECT_FIRST_S
            logger.info("connected to Milvus at %s", self.uri)
            return self._raw

    def _connect(self) -> Any:
        """A new client, with the identities collection created and the gallery's collections
        loaded (a restarted Milvus leaves them released)."""
        from pymilvus import MilvusClient

        client = MilvusClient(
            uri=self.uri,
            token=self._token,
            dedicated=True,
            timeout=self.timeout_s,
            grpc_options=dict(GRPC_KEEPALIVE),
        )
        try:
            bounded = {"timeout": self.timeout_s}
            if not client.has_collection(self.identities, **bounded):
                self._create_identities(client)
            start = f"{self.prefix}_faces_"
            names = [c for c in client.list_collections(**bounded) if c.startswith(start)]
            for name in [self.identities, *names]:
                self._load(client, name)
        except BaseException:
            client.close()
            raise
        return client

    def _load(self, client: Any, collection: str) -> None:
        from pymilvus.client.types import LoadState

        state = client.get_load_state(collection, timeout=self.timeout_s)["state"]
        if state != LoadState.Loaded:
            logger.info("loading Milvus collection %s (it was %s)", collection, state.name)
            client.load_collection(collection, timeout=self.timeout_s)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One request to Milvus, bounded by `timeout_s`; a collection found released (Milvus
        restarted) is loaded and the request sent once more. Failures become
        `gallery_unavailable` (see `_unavailable`)."""
        kwargs.setdefault("timeout", self.timeout_s)
        client = self._connected()
        try:
            try:
                return getattr(client, method)(*args, **kwargs)
            except Exception as exc:
                collection = args[0] if args else kwargs.get("collection_name")
                if not (_not_loaded(exc) and isinstance(collection, str)):
                    raise
                self._load(client, collection)
                return getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            if _is_backend_error(exc):
                raise self._unavailable(method, exc) from None
            raise

    def health(self) -> str | None:
        """Why Milvus cannot serve now, in one line (`ping`); None when it can."""
        try:
            self.ping()
        except ServiceError as exc:
            return exc.message
        return None

    def ping(self) -> None:
        """A readiness check in a few small requests whatever the gallery's size: connected,
        and the identities collection loaded (loaded again, with the faces collections, if
        Milvus restarted). Raises `gallery_unavailable` otherwise."""
        client = self._connected()
        try:
            from pymilvus.client.types import LoadState

            state = client.get_load_state(self.identities, timeout=self.timeout_s)["state"]
            if state != LoadState.Loaded:
                for name in [self.identities, *self._known_faces]:
                    self._load(client, name)
        except Exception as exc:
            if _is_backend_error(exc):
                raise self._unavailable("ping", exc) from None
            raise

    # --- collections ---------------------------------------------------------------------

    def _create_identities(self, client: Any) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
        schema.add_field("name", DataType.VARCHAR, max_length=NAME_LENGTH)
        schema.add_field("metadata", DataType.VARCHAR, max_length=METADATA_LENGTH)
        schema.add_field("created_at", DataType.VARCHAR, max_length=64)
        schema.add_field("updated_at", DataType.VARCHAR, max_length=64)
        schema.add_field("created_ns", DataType.INT64)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=UNUSED_VECTOR_DIM)
        index = client.prepare_index_params()
        index.add_index(field_name="unused", index_type="FLAT", metric_type="IP")
        client.create_collection(
            self.identities,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            timeout=self.timeout_s,
        )

    def faces_collection(self, dim: int) -> str:
        return f"{self.prefix}_faces_{dim}"

    def _ensure_faces(self, dim: int) -> str:
        from pymilvus import DataType, MilvusClient

        name = self.faces_collection(dim)
        if name in self._known_faces or self.client.has_collection(name):
            self._known_faces.add(name)
            return name
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("index_id", DataType.INT64, is_primary=True)
        schema.add_field("face_id", DataType.VARCHAR, max_length=ID_LENGTH)
        schema.add_field("identity_id", DataType.VARCHAR, max_length=ID_LENGTH)
        schema.add_field("model_id", DataType.VARCHAR, max_length=MODEL_LENGTH)
        schema.add_field("image_sha256", DataType.VARCHAR, max_length=SHA256_LENGTH)
        schema.add_field("created_at", DataType.VARCHAR, max_length=64)
        schema.add_field("quality", DataType.FLOAT)
        schema.add_field("det_score", DataType.FLOAT)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index(field_name="embedding", index_type="FLAT", metric_type="IP")
        self.client.create_collection(
            name, schema=schema, index_params=index, consistency_level="Strong"
        )
        self._known_faces.add(name)
        return name

    def face_collections(self) -> list[str]:
        """Every faces collection of this gallery (one per embedding size)."""
        start = f"{self.prefix}_faces_"
        found = [c for c in self.client.list_collections() if c.startswith(start)]
        self._known_faces.update(found)
        return sorted(found)

    def _query(self, collection: str, expression: str, fields: list[str]) -> list[dict]:
        """Every row matching `expression` (paged past Milvus's result window)."""
        rows: list[dict] = []
        iterator = self.client.query_iterator(
            collection, batch_size=MAX_RESULT_WINDOW // 4, filter=expression, output_fields=fields
        )
        try:
            while batch := iterator.next():
                rows.extend(batch)
        except Exception as exc:
            if _is_backend_error(exc):
                raise self._unavailable("query_iterator", exc) from None
            raise
        finally:
            iterator.close()
        return rows

    def _count(self, collection: str, expression: str = "") -> int:
        result = self.client.query(collection, filter=expression, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    # --- identities ----------------------------------------------------------------------

    def _identity_rows(self, ids: Sequence[str]) -> list[dict]:
        rows: list[dict] = []
        for start in range(0, len(ids), FILTER_BATCH_IDS):
            part = list(ids[start : start + FILTER_BATCH_IDS])
            rows += self.client.query(
                self.identities,
                filter=_in("id", part),
                output_fields=["id", "name", "metadata", "created_at", "updated_at"],
            )
        return rows

    def _face_counts(self, ids: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(ids, 0)
        for collection in self.face_collections():
            for start in range(0, len(ids), FILTER_BATCH_IDS):
                part = list(ids[start : start + FILTER_BATCH_IDS])
                for row in self._query(collection, _in("identity_id", part), ["identity_id"]):
                    counts[row["identity_id"]] += 1
        return counts

    def _identities(self, ids: Sequence[str]) -> list[Identity]:
        """The identities with these ids that exist, in the order of `ids`."""
        rows = {row["id"]: row for row in self._identity_rows(ids)}
        counts = self._face_counts([i for i in ids if i in rows])
        return [
            Identity(
                id=i,
                name=rows[i]["name"],
                metadata=json.loads(rows[i]["metadata"]),
                created_at=rows[i]["created_at"],
                updated_at=rows[i]["updated_at"],
                face_count=counts[i],
            )
            for i in ids
            if i in rows
        ]

    def create_identity(
        self, name: str, metadata: dict[str, Any], identity_id: str | None = None
    ) -> Identity | None:
        if identity_id is not None and self._identity_rows([identity_id]):
            return None
        now = utc_now()
        identity = Identity(identity_id or new_id(), name, dict(metadata), now, now, 0)
        self.client.insert(self.identities, [self._identity_row(identity, time.time_ns())])
        return identity

    def create_identities(self, identities: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        wanted = {i: (name, metadata) for i, name, metadata in identities}
        existing = {row["id"] for row in self._identity_rows(list(wanted))}
        now, created_ns = utc_now(), time.time_ns()
        rows = [
            self._identity_row(Identity(i, name, dict(metadata), now, now), created_ns + n)
            for n, (i, (name, metadata)) in enumerate(wanted.items())
            if i not in existing
        ]
        for start in range(0, len(rows), WRITE_BATCH_ROWS):
            self.client.insert(self.identities, rows[start : start + WRITE_BATCH_ROWS])
        return len(rows)

    @staticmethod
    def _identity_row(identity: Identity, created_ns: int) -> dict[str, Any]:
        return {
            "id": identity.id,
            "name": identity.name,
            "metadata": json.dumps(identity.metadata, ensure_ascii=False),
            "created_at": identity.created_at,
            "updated_at": identity.updated_at,
            "created_ns": created_ns,
            "unused": [0.0] * UNUSED_VECTOR_DIM,
        }

    def get_identity(self, identity_id: str) -> Identity | None:
        found = self._identities([identity_id])
        return found[0] if found else None

    def _ordered_ids(self) -> list[str]:
        rows = self._query(self.identities, "", ["id", "created_ns"])
        rows.sort(key=lambda row: (row["created_ns"], row["id"]))
        return [row["id"] for row in rows]

    def list_identities(self, limit: int, offset: int) -> list[Identity]:
        """Milvus queries have no ORDER BY: ids and creation times are read and sorted here
        (about 50 bytes per identity), then the page is fetched."""
        page = self._ordered_ids()[offset : offset + limit]
        return self._identities(page)

    def update_identity(
        self, identity_id: str, name: str | None, metadata: dict[str, Any] | None
    ) -> Identity | None:
        rows = self.client.query(
            self.identities, filter=_in("id", [identity_id]), output_fields=["*"]
        )
        if not rows:
            return None
        row = rows[0]
        updated = Identity(
            id=identity_id,
            name=row["name"] if name is None else name,
            metadata=json.loads(row["metadata"]) if metadata is None else metadata,
            created_at=row["created_at"],
            updated_at=utc_now(),
        )
        self.client.upsert(self.identities, [self._identity_row(updated, row["created_ns"])])
        return self.get_identity(identity_id)

    def delete_identity(self, identity_id: str) -> list[int] | None:
        if not self._identity_rows([identity_id]):
            return None
        removed: list[int] = []
        expression = f"identity_id == {_quote(identity_id)}"
        for collection in self.face_collections():
            removed += [r["index_id"] for r in self._query(collection, expression, ["index_id"])]
            self.client.delete(collection, filter=expression)
        self.client.delete(self.identities, filter=_in("id", [identity_id]))
        for collection in self.face_collections():  # a face added while we deleted
            self.client.delete(collection, filter=expression)
        return sorted(removed)

    def counts(self) -> tuple[int, int]:
        faces = sum(self._count(c) for c in self.face_collections())
        return self._count(self.identities), faces

    # --- faces ---------------------------------------------------------------------------

    def _face_row(self, face: NewFace) -> tuple[dict[str, Any], FaceRecord]:
        embedding = np.asarray(face.embedding, dtype=np.float32).reshape(-1)
        face_id = face.face_id or new_id()
        record = FaceRecord(
            face_id=face_id,
            index_id=face_key(face_id),
            identity_id=face.identity_id,
            model_id=face.model_id,
            quality=float(face.quality),
            det_score=float(face.det_score),
            image_sha256=face.image_sha256,
            created_at=utc_now(),
        )
        row = {**record.__dict__, "embedding": embedding.tolist()}
        return row, record

    def add_face(self, face: NewFace) -> FaceRecord | None:
        stored = self._add([face])
        return stored[0] if stored else None

    def add_faces(self, faces: Sequence[NewFace]) -> int:
        return len(self._add(faces))

    def import_batch(
        self,
        identities: Sequence[tuple[str, str, dict[str, Any]]],
        faces: Sequence[NewFace],
    ) -> tuple[int, int]:
        """Identities, then their faces (Milvus has no transactions across collections: after
        a failure in between, a re-run of the idempotent import adds the missing faces)."""
        return self.create_identities(identities), self.add_faces(faces)

    def _add(self, faces: Sequence[NewFace]) -> list[FaceRecord]:
        """Insert the faces whose identity exists and whose `face_id` is not stored yet, with
        a fixed number of requests per batch (not per face)."""
        owners = sorted({f.identity_id for f in faces})
        existing = {row["id"] for row in self._identity_rows(owners)}
        faces = [f for f in faces if f.identity_id in existing]
        given = [face_key(f.face_id) for f in faces if f.face_id]
        present: set[int] = set()
        for collection in self.face_collections() if given else []:
            for start in range(0, len(given), FILTER_BATCH_IDS):
                part = given[start : start + FILTER_BATCH_IDS]
                rows = self.client.query(
                    collection, filter=_in("index_id", part), output_fields=["index_id"]
                )
                present.update(int(row["index_id"]) for row in rows)
        records: list[FaceRecord] = []
        by_collection: dict[str, list[dict]] = {}
        for face in faces:
            if face.face_id and face_key(face.face_id) in present:
                continue
            row, record = self._face_row(face)
            collection = self._ensure_faces(len(row["embedding"]))
            by_collection.setdefault(collection, []).append(row)
            records.append(record)
        for collection, rows in by_collection.items():
            for start in range(0, len(rows), WRITE_BATCH_ROWS):
                self.client.insert(collection, rows[start : start + WRITE_BATCH_ROWS])
        if not records:
            return []
        # An identity deleted while we inserted: take its faces back out.
        still = {row["id"] for row in self._identity_rows(sorted({r.identity_id for r in records}))}
        orphans = {r.index_id for r in records if r.identity_id not in still}
        if orphans:
            for collection, rows in by_collection.items():
                ids = [row["index_id"] for row in rows if row["index_id"] in orphans]
                if ids:
                    self.client.delete(collection, ids=ids)
        return [r for r in records if r.index_id not in orphans]

    def delete_face(self, identity_id: str, face_id: str) -> int | None:
        expression = f"face_id == {_quote(face_id)} and identity_id == {_quote(identity_id)}"
        for collection in self.face_collections():
            rows = self.client.query(collection, filter=expression, output_fields=["index_id"])
            if rows:
                index_id = int(rows[0]["index_id"])
                self.client.delete(collection, ids=[index_id])
                return index_id
        return None

    @staticmethod
    def _creation_order(row: dict) -> tuple[str, int]:
        return row["created_at"], int(row["index_id"])

    def faces_of(self, identity_id: str) -> list[FaceRecord]:
        rows: list[dict] = []
        expression = f"identity_id == {_quote(identity_id)}"
        for collection in self.face_collections():
            rows += self._query(collection, expression, list(FACE_FIELDS))
        return [FaceRecord.from_row(row) for row in sorted(rows, key=self._creation_order)]

    def _model_faces(self, identity_id: str, model_id: str) -> list[dict]:
        expression = f"identity_id == {_quote(identity_id)} and model_id == {_quote(model_id)}"
        rows: list[dict] = []
        for collection in self.face_collections():
            rows += self._query(collection, expression, [*FACE_FIELDS, "embedding"])
        return sorted(rows, key=self._creation_order)

    def embeddings_of(self, identity_id: str, model_id: str) -> tuple[list[FaceRecord], np.ndarray]:
        rows = self._model_faces(identity_id, model_id)
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        vectors = np.asarray([row["embedding"] for row in rows], np.float32)
        return [FaceRecord.from_row(row) for row in rows], vectors

    def identity_embeddings(self, identity_id: str, model_id: str) -> IdentityEmbeddings | None:
        """Faces first, then the identity: a delete racing this read (it removes faces, then
        the identity) makes it answer None or no faces, never faces without an identity."""
        faces, vectors = self.embeddings_of(identity_id, model_id)
        identity = self.get_identity(identity_id)
        if identity is None:
            return None
        return IdentityEmbeddings(identity, faces, vectors)

    def export(self, batch_size: int = 1_000) -> Iterator[ExportedIdentity]:
        ids = self._ordered_ids()
        for start in range(0, len(ids), batch_size):
            identities = self._identities(ids[start : start + batch_size])
            wanted = [i.id for i in identities]
            rows: dict[str, list[dict]] = {i: [] for i in wanted}
            for collection in self.face_collections():
                for row in self._query(
                    collection, _in("identity_id", wanted), [*FACE_FIELDS, "embedding"]
                ):
                    rows[row["identity_id"]].append(row)
            for identity in identities:
                mine = sorted(rows[identity.id], key=self._creation_order)
                yield ExportedIdentity(
                    identity,
                    [FaceRecord.from_row(row) for row in mine],
                    [np.asarray(row["embedding"], np.float32) for row in mine],
                )

    def labels(self, index_ids: Sequence[int]) -> dict[int, FaceLabel]:
        wanted = sorted({int(i) for i in index_ids})
        faces: list[dict] = []
        for collection in self.face_collections() if wanted else []:
            for start in range(0, len(wanted), FILTER_BATCH_IDS):
                part = wanted[start : start + FILTER_BATCH_IDS]
                faces += self.client.query(
                    collection,
                    filter=_in("index_id", part),
                    output_fields=["index_id", "face_id", "identity_id"],
                )
        names = {
            row["id"]: row["name"]
            for row in self._identity_rows(sorted({f["identity_id"] for f in faces}))
        }
        return {
            int(f["index_id"]): FaceLabel(
                int(f["index_id"]), f["face_id"], f["identity_id"], names[f["identity_id"]]
            )
            for f in faces
            if f["identity_id"] in names
        }

    def embeddings_by_index_id(
        self, index_ids: Sequence[int], model_id: str
    ) -> dict[int, np.ndarray]:
        wanted = sorted({int(i) for i in index_ids})
        found: dict[int, np.ndarray] = {}
        for collection in self.face_collections() if wanted else []:
            for start in range(0, len(wanted), FILTER_BATCH_IDS):
                part = wanted[start : start + FILTER_BATCH_IDS]
                rows = self.client.query(
                    collection,
                    filter=f"{_in('index_id', part)} and model_id == {_quote(model_id)}",
                    output_fields=["index_id", "embedding"],
                )
                found.update(
                    (int(row["index_id"]), np.asarray(row["embedding"], np.float32)) for row in rows
                )
        return found

    def faces_per_model(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for collection in self.face_collections():
            for row in self._query(collection, "", ["model_id"]):
                counts[row["model_id"]] = counts.get(row["model_id"], 0) + 1
        return dict(sorted(counts.items()))

    def has_faces_of_other_models(self, model_id: str) -> bool:
        expression = f"model_id != {_quote(model_id)}"
        return any(
            self.client.query(c, filter=expression, output_fields=["index_id"], limit=1)
            for c in self.face_collections()
        )

    # --- erasure and shutdown ------------------------------------------------------------

    def erase(self) -> bool:
        """Seal the delete logs and ask Milvus to compact, so that deleted rows are rewritten
        out of the segments (Milvus runs the compaction in the background)."""
        for collection in [self.identities, *self.face_collections()]:
            self.client.flush(collection)
            self.client.compact(collection)
        return True

    def close(self) -> None:
        """Close the connection; a call still running in a thread afterwards (one that timed
        out for its client) fails instead of connecting again."""
        with self._connecting:
            self._closed = True
            if self._raw is not None:
                self._raw.close()
                self._raw = None


class MilvusSearch:
    """`FaceSearch` by Milvus: the loaded model's faces, searched in Milvus at each request.

    Nothing is cached in the worker, so there is nothing to catch up: every replica sees every
    acknowledged write at its next request (Strong consistency).
    """

    def __init__(self, store: MilvusStore, *, model_id: str, dim: int) -> None:
        self._store = store
        self.model_id = model_id
        self.dim = dim
        # Known after the first search (each search refreshes it); read now when Milvus
        # answers, so that start-up can warn about other models' faces.
        self._other_model_faces = 0
        try:
            self._other_model_faces = int(store.has_faces_of_other_models(model_id))
        except ServiceError as exc:
            logger.warning("the gallery is not reachable yet: %s", exc.message)

    @property
    def state(self) -> IndexState:
        return IndexState(
            kind="milvus", device="remote", size=0, seq=0, other_model_faces=self._other_model_faces
        )

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        self._other_model_faces = int(self._store.has_faces_of_other_models(self.model_id))
        collection = self._store.faces_collection(self.dim)
        limit = min(k, MAX_RESULT_WINDOW)
        if not self._store.client.has_collection(collection) or len(queries) == 0:
            hits: list[list[dict]] = [[] for _ in queries]
        else:
            hits = self._store.client.search(
                collection,
                data=queries.tolist(),
                limit=limit,
                filter=f"model_id == {_quote(self.model_id)}",
                search_params={"metric_type": "IP"},
                output_fields=[],
            )
        # Fewer columns than k tells `Gallery` the whole gallery was searched; a k beyond
        # Milvus's window is searched up to the window only.
        width = max((len(row) for row in hits), default=0)
        similarities = np.full((len(queries), width), -np.inf, np.float32)
        ids = np.full((len(queries), width), -1, np.int64)
        for number, row in enumerate(hits):
            for column, hit in enumerate(row):
                similarities[number, column] = hit["distance"]
                ids[number, column] = hit.get("index_id", hit.get("id"))
        return SearchResult(similarities, ids)

    def catch_up(self) -> int:
        return 0

    def indexed_ids(self) -> np.ndarray:
        collection = self._store.faces_collection(self.dim)
        if not self._store.client.has_collection(collection):
            return np.zeros(0, np.int64)
        rows = self._store._query(collection, f"model_id == {_quote(self.model_id)}", ["index_id"])
        return np.sort(np.asarray([r["index_id"] for r in rows], np.int64))

    def erased(self) -> None:
        """No copy of the gallery is kept outside Milvus."""

    def start_polling(self, interval_s: float) -> None:
        """Nothing to poll: no worker holds a copy of the gallery."""

    def stop(self) -> None:
        """Nothing to stop."""
