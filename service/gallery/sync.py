"""Keeps one worker process's FAISS index in step with the shared store.

Every uvicorn worker holds its own index. The store appends each face addition and removal
to an ordered change log in the same transaction as the write; before every search the worker
replays the log after the last `seq` it applied (one indexed range query that returns nothing
when nothing changed). So an enrolment or deletion that got its HTTP answer in one worker is
seen by the next search in every worker. A background thread also catches up every
`POLL_INTERVAL_S` seconds, so an idle worker does not keep a deleted embedding in memory.

A worker may start from the index a previous one saved (`service.gallery.persisted`, which
checks the file's checksum). It then trusts it only if the store agrees: the file is not ahead
of the change log, the change log still holds every change since it, the face count matches
after replaying them, and a random sample of its vectors equals the store's. Any doubt: rebuild
from the store and rewrite the file. If the replay removed faces (a crash after a deletion
committed and before its file was removed), the file still holds their embeddings: it is
rewritten before the worker serves. Saved files of other models and temporary files left by a
crash are removed at start-up when they may hold deleted embeddings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from service.gallery import persisted
from service.gallery.index import FaceIndex, IndexSetting, choose_kind
from service.gallery.interface import (
    ChangeLog,
    ChangesSince,
    IndexState,
    SearchResult,
)

logger = logging.getLogger(__name__)

# Idle catch-up period: bounds how long a removed embedding stays in an idle worker's memory.
POLL_INTERVAL_S = 2.0

# At start-up the change log is trimmed to this many rows (about 40 bytes each). A worker
# that fell further behind than that rebuilds its index from the store instead of replaying.
CHANGE_LOG_KEEP = 100_000

# Galleries from this size on save their index at start-up for the next one (smaller ones
# build in about a second, bench/gallery_backends.py).
SAVE_MIN_FACES = 50_000

# An IVF index trained on n faces is retrained once the gallery has grown to this many
# times n: its lists were sized for n and grow unbalanced (slower, no less exact per probe).
IVF_RETRAIN_GROWTH = 4

# Vectors of a loaded saved index compared with the store's before it is used. The checksum
# catches a damaged file; the sample catches a whole file that does not describe this store
# (another data folder's file, a database restored or replaced under it). Read by primary
# key: 2-14 ms at 50k x 512-d on the loaded 2-core machine.
VERIFY_SAMPLE = 128


class IndexedStore(ChangeLog, Protocol):
    """The change log, and what checking a saved index against the store reads."""

    def embeddings_by_index_id(
        self, index_ids: Sequence[int], model_id: str
    ) -> dict[int, np.ndarray]: ...


class IndexSync:
    """`FaceSearch` on a FAISS index per worker: build from a store snapshot, replay changes.

    Owns a worker's index: build from a store snapshot, replay changes, search.

    Thread-safe: one lock serialises catch-up and search (FAISS uses all cores inside a
    search anyway, so parallel searches would only contend).
    """

    def __init__(
        self,
        store: IndexedStore,
        *,
        model_id: str,
        dim: int,
        setting: IndexSetting = "auto",
        approx_min_faces: int = 200_000,
        use_gpu: bool | None = None,
        on_change: Callable[[IndexState], None] | None = None,
        saved_index: Path | None = None,
    ) -> None:
        self._store = store
        self.model_id = model_id
        self.dim = dim
        self._setting: IndexSetting = setting
        self._approx_min_faces = approx_min_faces
        self._use_gpu = use_gpu
        self._on_change = on_change
        self._lock = threading.Lock()
        self._seq = 0
        self._other_model_faces = 0
        self._trained_on = 0
        self._index = FaceIndex(dim, "flat", use_gpu=False)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._saved_index = saved_index
        with self._lock:
            if saved_index is not None:
                self._remove_stale_files(saved_index)
            if not self._load_saved():
                self._rebuild()
                self._save()

    # --- state -------------------------------------------------------------------------------

    @property
    def state(self) -> IndexState:
        return IndexState(
            kind=self._index.kind,
            device=self._index.device,
            size=len(self._index),
            seq=self._seq,
            other_model_faces=self._other_model_faces,
        )

    def indexed_ids(self) -> np.ndarray:
        with self._lock:
            return self._index.ids()

    # --- building and catching up ------------------------------------------------------------

    def _rebuild(self) -> None:
        started = time.perf_counter()
        snapshot = self._store.snapshot(self.model_id)
        if snapshot.embeddings.size and snapshot.embeddings.shape[1] != self.dim:
            raise RuntimeError(
                f"the gallery holds {snapshot.embeddings.shape[1]}-d embeddings for model "
                f"{self.model_id}, but the model makes {self.dim}-d ones; the database is corrupt"
            )
        kind = choose_kind(self._setting, len(snapshot.index_ids), self._approx_min_faces)
        self._index = FaceIndex.build(
            self.dim, kind, snapshot.index_ids, snapshot.embeddings, use_gpu=self._use_gpu
        )
        self._trained_on = len(snapshot.index_ids)
        self._seq = snapshot.seq
        self._other_model_faces = snapshot.other_model_faces
        logger.info(
            "gallery index built: %s on %s, %d faces of model %s in %.1f s (seq %d)",
            self._index.kind,
            self._index.device,
            len(self._index),
            self.model_id,
            time.perf_counter() - started,
            self._seq,
        )
        self._notify()

    def _load_saved(self) -> bool:
        """Start from the saved index and the changes since it; False to rebuild instead."""
        if self._saved_index is None:
            return False
        started = time.perf_counter()
        saved = persisted.load(
            self._saved_index, model_id=self.model_id, dim=self.dim, use_gpu=self._use_gpu
        )
        if saved is None:
            return False
        last_seq = self._store.last_seq()
        if saved.seq > last_seq:
            logger.warning(
                "the saved gallery index %s reflects change %d, but the store's log ends at %d "
                "(the database was replaced or restored): rebuilding it",
                self._saved_index,
                saved.seq,
                last_seq,
            )
            return False
        since = self._store.changes_since(saved.seq, self.model_id)
        if not since.complete:
            logger.info("the change log was pruned past the saved index: rebuilding it")
            return False
        self._index, self._seq = saved.index, saved.seq
        self._trained_on, self._other_model_faces = saved.trained_on, saved.other_model_faces
        holds_deleted = any(c.op == "remove" and c.model_id == self.model_id for c in since.changes)
        self._apply(since)
        stored = self._store.faces_per_model().get(self.model_id, 0)
        if len(self._index) != stored:
            logger.warning(
                "the saved gallery index has %d faces after catching up, the store %d: rebuilding",
                len(self._index),
                stored,
            )
            return False
        differs = self._differs_from_store()
        if differs is not None:
            logger.warning(
                "the saved gallery index %s disagrees with the store (%s): rebuilding it",
                self._saved_index,
                differs,
            )
            return False
        logger.info(
            "gallery index loaded from %s: %s, %d faces in %.1f s (seq %d)",
            self._saved_index,
            self._index.kind,
            len(self._index),
            time.perf_counter() - started,
            self._seq,
        )
        if holds_deleted:
            logger.info(
                "the saved gallery index still held faces deleted since it was written "
                "(interrupted before removing it): rewriting it"
            )
            self._save()
        self._notify()
        return True

    def _differs_from_store(self) -> str | None:
        """None when a random sample of the index's vectors equals the store's embeddings;
        otherwise what differs."""
        ids = self._index.ids()
        if ids.size == 0:
            return None
        sample = np.random.default_rng().choice(ids, min(VERIFY_SAMPLE, ids.size), replace=False)
        truth = self._store.embeddings_by_index_id(sample.tolist(), self.model_id)
        found_ids, vectors = self._index.vectors_of(sample)
        held = dict(zip(found_ids.tolist(), vectors, strict=True))
        unknown = [int(i) for i in sample if int(i) not in truth]
        if unknown:
            # Deleted since we caught up (by another worker), or never in the store at all.
            since = self._store.changes_since(self._seq, self.model_id)
            removed = {c.index_id for c in since.changes if c.op == "remove"}
            strangers = [i for i in unknown if i not in removed]
            if strangers or not since.complete:
                return f"face {(strangers or unknown)[0]} is in the index, not in the store"
        for index_id, vector in truth.items():
            if index_id in held and not np.array_equal(held[index_id], vector):
                return f"the vector of face {index_id} differs from the store's"
        return None

    def _save(self) -> None:
        """Save a freshly built index for the next start-up (large galleries only); a file
        that is not rewritten is removed (it may be damaged or hold deleted embeddings)."""
        path = self._saved_index
        if path is None:
            return
        if len(self._index) < SAVE_MIN_FACES:
            persisted.discard(path)
            return
        seq = self._seq
        try:
            saved = persisted.save(
                path,
                self._index,
                model_id=self.model_id,
                seq=seq,
                trained_on=self._trained_on,
                other_model_faces=self._other_model_faces,
            )
        except OSError as error:
            logger.warning("could not save the gallery index to %s: %s", path, error)
            persisted.discard(path)
            return
        if not saved:
            persisted.discard(path)
            return
        # A deletion since the snapshot: the file may hold its embedding; the deleting worker
        # removed the file before we wrote it, so remove ours (the next start rebuilds).
        since = self._store.changes_since(seq, self.model_id)
        if not since.complete or any(c.op == "remove" for c in since.changes):
            persisted.discard(path)

    def _remove_stale_files(self, saved_index: Path) -> None:
        """Remove files in the data folder that may hold deleted embeddings: temporary files
        of interrupted saves, and other models' saved indexes older than a deletion of one of
        their faces (or unreadable, or of an older format). Ours is checked when loaded."""
        folder = saved_index.parent
        for path in persisted.remove_abandoned(folder):
            logger.info("removed %s, left by an interrupted save of the gallery index", path)
        for path in persisted.saved_files(folder):
            if path == saved_index:
                continue
            try:
                header = persisted.read_header(path)
                since: ChangesSince | None = None
                if header.get("format") == persisted.FORMAT_VERSION:
                    since = self._store.changes_since(int(header["seq"]), str(header["model_id"]))
                stale = (
                    since is None
                    or not since.complete
                    or any(
                        c.op == "remove" and c.model_id == header["model_id"] for c in since.changes
                    )
                )
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                stale = True
            if stale:
                persisted.discard(path)
                logger.info(
                    "removed the saved gallery index %s: another model's, older than a "
                    "deletion of its faces, unreadable or of an older format",
                    path,
                )

    def erased(self) -> None:
        """Deleted faces: drop every saved index (any model's), which may hold them."""
        if self._saved_index is not None:
            persisted.discard_all(self._saved_index.parent)

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change(self.state)

    def rebuild(self) -> None:
        """Rebuild the index from the store (start-up, or after a change of index kind)."""
        with self._lock:
            self._rebuild()

    def _catch_up(self) -> int:
        return self._apply(self._store.changes_since(self._seq, self.model_id))

    def _apply(self, since: ChangesSince) -> int:
        """Apply the changes read from the log (or rebuild when it was pruned past our seq)."""
        if not since.complete:
            logger.info("change log pruned past seq %d: rebuilding the index", self._seq)
            self._rebuild()
            return 0
        if not since.changes:
            return 0
        # Removals and additions are each applied as one batch (a removal scans the stored ids
        # once per call: 5 faces one by one took 198 ms at 200k x 512, as one batch 39 ms).
        # Their order does not matter: index ids are never reused, and the log is read in one
        # snapshot, so an add whose face was removed within it carries no embedding.
        added_ids: list[int] = []
        added_vectors: list[np.ndarray] = []
        removed_ids: list[int] = []
        for change in since.changes:
            if change.model_id != self.model_id:
                self._other_model_faces += 1 if change.op == "add" else -1
            elif change.op == "add":
                if change.embedding is not None:  # None: removed again since
                    added_ids.append(change.index_id)
                    added_vectors.append(change.embedding)
            else:
                removed_ids.append(change.index_id)
        if removed_ids:
            self._index.remove(np.array(removed_ids, np.int64))
        if added_ids:
            self._index.add(np.array(added_ids, np.int64), np.stack(added_vectors))
        self._seq = since.changes[-1].seq
        if self._should_rebuild():
            self._rebuild()
        else:
            self._notify()
        return len(since.changes)

    def _should_rebuild(self) -> bool:
        if self._index.needs_rebuild:
            return True
        size = len(self._index)
        if self._index.kind == "ivf" and size > IVF_RETRAIN_GROWTH * max(self._trained_on, 1):
            return True
        # Grow from exact to approximate when the gallery crosses the threshold; never
        # shrink back in-process (a restart chooses again), so a gallery hovering around the
        # threshold does not rebuild on every change.
        wanted = choose_kind(self._setting, size, self._approx_min_faces)
        return self._index.kind == "flat" and wanted != "flat"

    def catch_up(self) -> int:
        """Apply the store's changes since the last one applied; how many there were."""
        with self._lock:
            return self._catch_up()

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Catch up with the store, then search (both under the lock)."""
        with self._lock:
            self._catch_up()
            return self._index.search(queries, k)

    # --- background polling --------------------------------------------------------------

    def start_polling(self, interval_s: float = POLL_INTERVAL_S) -> None:
        if self._poller is not None:
            return
        self._poller = threading.Thread(
            target=self._poll, args=(interval_s,), name="gallery-sync", daemon=True
        )
        self._poller.start()

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.catch_up()
            except Exception:  # the next request retries, and reports, the same catch-up
                logger.exception("background gallery catch-up failed")

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
