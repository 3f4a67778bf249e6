"""Enrolled gallery: a durable store (source of truth) and a derived FAISS index per worker.

`open_gallery` is the one factory the app calls at start-up; `Gallery` is what routes use.
Design notes (store, index choice, multi-worker sync, model tagging, erasure): docs/gallery.md.
"""

from __future__ import annotations

from service.gallery.gallery import Candidate, Gallery, GalleryMatch, IdentityDetails
from service.gallery.store import SqliteStore
from service.gallery.sync import CHANGE_LOG_KEEP
from service.metrics import Metrics
from service.packs import ModelPack
from service.settings import Settings

__all__ = ["Candidate", "Gallery", "GalleryMatch", "IdentityDetails", "open_gallery"]


def open_gallery(settings: Settings, pack: ModelPack, metrics: Metrics | None = None) -> Gallery:
    """Open (or create) the gallery in `settings.data_dir` for the loaded pack's model."""
    store = SqliteStore.in_directory(settings.data_dir)
    try:
        store.prune_changes(CHANGE_LOG_KEEP)
        return Gallery(
            store,
            model_id=pack.model_id,
            dim=pack.manifest.recognizer.embedding_size,
            index_setting=settings.index_type,
            approx_min_faces=settings.approx_index_min_faces,
            metrics=metrics,
        )
    except BaseException:
        store.close()
        raise
