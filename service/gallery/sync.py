"""Keeps one worker process's FAISS index in step with the shared store.

Every uvicorn worker holds its own index. The store appends each face addition and removal
to an ordered change log in the same transaction as the write; before every search the worker
replays the log after the last `seq` it applied (one indexed range query that returns nothing
when nothing changed). So an enrolment or deletion that got its HTTP answer in one worker is
seen by the next search in every worker. A background thread also catches up every
`POLL_INTERVAL_S` seconds, so an idle worker does not keep a deleted embedding in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.gallery import persisted
from service.gallery.index import FaceIndex, IndexSetting, choose_kind
from service.gallery.interface import ChangeLog, IndexState, SearchResult

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


class IndexSync:
    """`FaceSearch` on a FAISS index per worker: build from a store snapshot, replay changes.

    Owns a worker's index: build from a store snapshot, replay changes, search.

    Thread-safe: one lock serialises catch-up and search (FAISS uses all cores inside a
    search anyway, so parallel searches would only contend).
    """

    def __init__(
        self,
        store: ChangeLog,
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
        if saved is None or not self._store.changes_since(saved.seq, self.model_id).complete:
            return False
        self._index, self._seq = saved.index, saved.seq
        self._trained_on, self._other_model_faces = saved.trained_on, saved.other_model_faces
        self._catch_up()
        stored = self._store.faces_per_model().get(self.model_id, 0)
        if len(self._index) != stored:
            logger.warning(
                "the saved gallery index has %d faces after catching up, the store %d: rebuilding",
                len(self._index),
                stored,
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
        self._notify()
        return True

    def _save(self) -> None:
        """Save a freshly built index for the next start-up (large galleries only)."""
        path = self._saved_index
        if path is None or len(self._index) < SAVE_MIN_FACES:
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
            return
        # A deletion since the snapshot: the file may hold its embedding; the deleting worker
        # removed the file before we wrote it, so remove ours (the next start rebuilds).
        since = self._store.changes_since(seq, self.model_id)
        if saved and (not since.complete or any(c.op == "remove" for c in since.changes)):
            persisted.discard(path)

    def erased(self) -> None:
        """Deleted faces: drop the saved index, which may hold their embeddings."""
        if self._saved_index is not None:
            persisted.discard(self._saved_index)

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change(self.state)

    def rebuild(self) -> None:
        """Rebuild the index from the store (start-up, or after a change of index kind)."""
        with self._lock:
            self._rebuild()

    def _catch_up(self) -> int:
        since = self._store.changes_since(self._seq, self.model_id)
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
