"""Enrolled gallery: a durable store (source of truth) and a search over it, in one of two
backends: embedded (SQLite + a FAISS index per worker) or Milvus (shared by every replica).

`open_gallery` is the one factory the app calls at start-up; `Gallery` is what routes use.
Design notes (store, index choice, multi-worker sync, model tagging, erasure): docs/gallery.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.gallery.gallery import Candidate, Gallery, GalleryMatch, IdentityDetails
from service.gallery.persisted import index_path
from service.gallery.store import SqliteStore
from service.gallery.sync import CHANGE_LOG_KEEP
from service.metrics import Metrics
from service.packs import ModelPack
from service.settings import Settings

if TYPE_CHECKING:
    from service.gallery.milvus import MilvusStore

__all__ = ["Candidate", "Gallery", "GalleryMatch", "IdentityDetails", "open_gallery"]


def open_gallery(settings: Settings, pack: ModelPack, metrics: Metrics | None = None) -> Gallery:
    """Open (or create) the gallery of `settings.gallery_backend` for the loaded pack's model."""
    if settings.gallery_backend == "milvus":
        return _open_milvus_gallery(settings, pack, metrics)
    store = SqliteStore.in_directory(
        settings.data_dir,
        busy_timeout_s=settings.gallery_busy_timeout_s,
        allow_empty=settings.gallery_allow_empty,
        metrics=metrics,
    )
    try:
        store.prune_changes(CHANGE_LOG_KEEP)
        return Gallery(
            store,
            model_id=pack.model_id,
            dim=pack.manifest.recognizer.embedding_size,
            index_setting=settings.index_type,
            approx_min_faces=settings.approx_index_min_faces,
            metrics=metrics,
            saved_index=index_path(settings.data_dir, pack.model_id),
            search_batch_rows=settings.search_batch_rows,
        )
    except BaseException:
        store.close()
        raise


def open_milvus_store(settings: Settings, *, connect: bool = True) -> MilvusStore:
    """The Milvus store named by the settings (also used by the gallery CLI)."""
    from service.gallery.milvus import MilvusStore

    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    return MilvusStore(
        settings.milvus_uri,
        token=token,
        prefix=settings.milvus_collection_prefix,
        timeout_s=settings.gallery_timeout_s,
        connect=connect,
    )


def _open_milvus_gallery(settings: Settings, pack: ModelPack, metrics: Metrics | None) -> Gallery:
    """Opens without waiting for Milvus: the service starts while Milvus is down, answers
    `gallery_unavailable` meanwhile, and connects (then loads its collections) at the first
    call or readiness check after Milvus is up."""
    from service.gallery.milvus import MilvusSearch

    store = open_milvus_store(settings, connect=False)
    model_id, dim = pack.model_id, pack.manifest.recognizer.embedding_size
    try:
        search = MilvusSearch(store, model_id=model_id, dim=dim)
        return Gallery(
            store,
            model_id=model_id,
            dim=dim,
            metrics=metrics,
            search=search,
            search_batch_rows=settings.search_batch_rows,
        )
    except BaseException:
        store.close()
        raise
