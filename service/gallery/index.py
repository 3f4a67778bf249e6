"""The gallery's search index: FAISS over inner product of L2-normalised embeddings.

It is derived data: built from the store at start-up and kept in step with the store's change
log (`service.gallery.sync`). Ids are the store's int64 `index_id`s, so a hit maps straight
back to a face row.

Index kinds (numbers measured by `bench/gallery_search.py`, see docs/gallery.md):
- `flat`: exact. `IndexIDMap2(IndexFlatIP)` holds the vectors (removal is `remove_ids`); on the
  CPU the search itself is a numpy matrix product over that storage, which measured faster
  than FAISS's own flat search.
- `ivf`: `IndexIVFFlat` trained on the gallery itself, ids stored natively (an `IndexIDMap2`
  around an IVF index renumbers its id map on removal while the IVF lists keep the old
  internal numbers, so the two would disagree). Removal is `remove_ids`.
- `hnsw`: `IndexIDMap2(IndexHNSWFlat)`. HNSW cannot remove nodes, so a removed face is
  excluded from every search by an id selector and its vector is overwritten with zeros in
  place (the embedding is gone from memory; the graph node stays until the next rebuild).

With faiss-gpu and a visible GPU, flat and ivf searches run on a GPU copy of the CPU index
(the CPU index stays the master copy that removals edit). Builds without GPU support never
touch the GPU code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import faiss
import numpy as np

from service.gallery.interface import SearchResult

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
IndexSetting = Literal["auto", "flat", "hnsw", "ivf"]

# `auto` above the size threshold. IVF, not HNSW: every worker rebuilds its index at start-up.
# On 2 cores IVF built 1M x 512 in 28 s, HNSW took 52-190 s for 100k already (5.6-9.4 min at
# 1M in earlier measurements); both returned a face of the exact top-1's identity for every
# query (bench/gallery_search.py; docs/gallery.md).
AUTO_APPROXIMATE_KIND: IndexKind = "ivf"

# HNSW graph degree and beam widths. At 100k clustered 512-d faces with M=32 and efSearch 128,
# efConstruction 40 (FAISS default) gave recall@1 0.965 and 80 gave 1.000, at about twice the
# build time; M=16 gave 0.825 (bench/gallery_search.py). efSearch is raised to k when a
# request asks for more neighbours than that.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128

# IVF lists: 2 * sqrt(n) (the FAISS wiki's "Guidelines to choose an index" suggest 4-16 *
# sqrt(n); fewer, larger lists train faster, and every worker trains at start-up), with at
# least 39 training points per list (below that FAISS warns and k-means centroids are noise).
# Lists probed per query: a quarter. Clustered 512-d data with random identity centres (no
# coarse structure, the hard case) needed that for recall@1 >= 0.99 at 100k faces with
# 316-1264 lists: 1/16 gave 0.80-0.97, 1/8 0.90-0.985 (bench/gallery_search.py runs,
# docs/gallery.md).
IVF_LISTS_PER_SQRT_N = 2
IVF_MIN_POINTS_PER_LIST = 39
IVF_PROBE_FRACTION = 1 / 4
IVF_MIN_NPROBE = 8

# k-means for the IVF centroids: a sample of 64 points per list and 10 iterations (FAISS
# defaults: up to 256 points per list, 25 iterations; training time is linear in both, and
# these gave the recall above), from a fixed seed so every worker trains the same lists.
IVF_TRAINING_POINTS_PER_LIST = 64
IVF_KMEANS_ITERATIONS = 10
IVF_TRAINING_SEED = 0

# Exact search multiplies this many queries at a time with the whole gallery, bounding the
# score matrix (32 x 1M floats = 128 MB).
EXACT_QUERY_BLOCK = 32

# HNSW removal keeps a set of excluded ids; past this share of the index the caller should
# rebuild (searches slow down and memory holds dead nodes).
MAX_TOMBSTONE_FRACTION = 0.2


def choose_kind(setting: IndexSetting, faces: int, approx_min_faces: int) -> IndexKind:
    """The index kind for a gallery of `faces` embeddings: forced, or chosen by size."""
    if setting != "auto":
        return setting
    return AUTO_APPROXIMATE_KIND if faces >= approx_min_faces else "flat"


def ivf_list_count(faces: int) -> int:
    """Number of IVF lists for a gallery size (at least 1)."""
    by_sqrt = IVF_LISTS_PER_SQRT_N * math.isqrt(max(faces, 1))
    return max(1, min(by_sqrt, faces // IVF_MIN_POINTS_PER_LIST))


def ivf_probe_count(lists: int) -> int:
    return min(lists, max(IVF_MIN_NPROBE, round(lists * IVF_PROBE_FRACTION)))


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "index_cpu_to_gpu") and faiss.get_num_gpus() > 0


class FaceIndex:
    """A FAISS index of one embedding size, with add / remove / search by int64 id.

    Not thread-safe: the caller serialises calls (`Gallery` holds a lock).
    """

    def __init__(self, dim: int, kind: IndexKind, *, use_gpu: bool | None = None) -> None:
        if dim <= 0:
            raise ValueError(f"embedding size must be positive, got {dim}")
        self.dim = dim
        self.kind: IndexKind = kind
        self._use_gpu = gpu_available() if use_gpu is None else use_gpu and gpu_available()
        if kind == "hnsw":
            self._use_gpu = False  # FAISS has no GPU HNSW (its GPU graph index is CAGRA).
        self._index: faiss.Index | None = None if kind == "ivf" else self._new_cpu_index()
        self._hnsw: faiss.IndexHNSWFlat | None = None
        if kind == "hnsw":
            self._hnsw = faiss.downcast_index(self._index.index)
        self._tombstones: set[int] = set()
        self._selector: faiss.IDSelector | None = None
        self._selector_parts: faiss.IDSelector | None = None
        self._gpu_index: faiss.Index | None = None
        self._gpu_resources: object | None = None
        self._quantizer: faiss.Index | None = None
        self.nprobe = 0

    def _new_cpu_index(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
            return faiss.IndexIDMap2(inner)
        raise ValueError(f"unknown index kind {self.kind!r}")

    @classmethod
    def build(
        cls,
        dim: int,
        kind: IndexKind,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        use_gpu: bool | None = None,
    ) -> FaceIndex:
        """An index holding `vectors` under `ids`; IVF is trained on these vectors.

        An IVF index needs at least one vector to train on: an empty gallery gets a flat index.
        """
        if kind == "ivf" and len(ids) == 0:
            kind = "flat"
        index = cls(dim, kind, use_gpu=use_gpu)
        if kind == "ivf":
            index._train_ivf(np.ascontiguousarray(vectors, dtype=np.float32))
        index.add(ids, vectors)
        return index

    def serialize(self) -> np.ndarray | None:
        """The CPU index as FAISS's bytes; None for an HNSW index with removed nodes (its
        exclusion list is not part of FAISS's data) or an untrained IVF index."""
        if self._index is None or self._tombstones:
            return None
        return faiss.serialize_index(self._index)

    @classmethod
    def deserialize(
        cls, dim: int, kind: IndexKind, data: np.ndarray, *, use_gpu: bool | None = None
    ) -> FaceIndex:
        """An index from `serialize`'s bytes; ValueError when they hold another kind or size."""
        loaded = faiss.deserialize_index(data)
        expected = faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexIDMap2
        if not isinstance(loaded, expected) or loaded.d != dim:
            raise ValueError(f"not a {dim}-d {kind} index")
        index = cls(dim, kind, use_gpu=use_gpu)
        index._index = loaded
        if kind == "ivf":
            index.nprobe = int(loaded.nprobe)
        if kind == "hnsw":
            index._hnsw = faiss.downcast_index(loaded.index)
        return index

    def _train_ivf(self, vectors: np.ndarray) -> None:
        lists = ivf_list_count(len(vectors))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1  # small galleries: we chose `lists` ourselves
        ivf.cp.niter = IVF_KMEANS_ITERATIONS
        sample_size = min(len(vectors), lists * IVF_TRAINING_POINTS_PER_LIST)
        if sample_size < len(vectors):
            rng = np.random.default_rng(IVF_TRAINING_SEED)
            vectors = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
        ivf.train(np.ascontiguousarray(vectors))
        self.nprobe = ivf_probe_count(lists)
        ivf.nprobe = self.nprobe
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        self._index = ivf

    # --- queries about the index ---------------------------------------------------------

    @property
    def device(self) -> str:
        return "gpu" if self._use_gpu else "cpu"

    def __len__(self) -> int:
        """Searchable vectors (removed HNSW nodes excluded)."""
        total = 0 if self._index is None else int(self._index.ntotal)
        return total - len(self._tombstones)

    @property
    def needs_rebuild(self) -> bool:
        """True when removed-but-present HNSW nodes make up too much of the index."""
        total = 0 if self._index is None else int(self._index.ntotal)
        return bool(self._tombstones) and len(self._tombstones) > MAX_TOMBSTONE_FRACTION * total

    def ids(self) -> np.ndarray:
        """Every searchable id (sorted), for checks against the store."""
        if self._index is None:
            return np.zeros(0, np.int64)
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            invlists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(ivf.nlist)
                if invlists.list_size(i)
            ]
            found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        else:
            found = faiss.vector_to_array(self._index.id_map)
        if self._tombstones:
            found = found[~np.isin(found, np.fromiter(self._tombstones, np.int64))]
        return np.sort(found.astype(np.int64))

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of those `ids` the index holds, as copies: (found ids, (n, dim)
        vectors). For checks against the store; removed HNSW nodes (zeros) are included."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        found_ids: list[np.ndarray] = []
        found_vectors: list[np.ndarray] = []
        if self._index is not None and ids.size:
            for stored, rows, found in self._located(ids):
                found_vectors.append(stored[rows].copy())
                found_ids.append(found)
        if not found_ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(found_ids), np.concatenate(found_vectors)

    def _located(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Where `ids` are stored: per block of storage (an IVF list, or the flat/HNSW
        storage), a writable (n, dim) float32 view of it, the rows of `ids` in it and their
        ids."""
        assert self._index is not None
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            lists = ivf.invlists
            for number in range(ivf.nlist):
                size = lists.list_size(number)
                if not size:
                    continue
                list_ids = faiss.rev_swig_ptr(lists.get_ids(number), size)
                hits = np.flatnonzero(np.isin(list_ids, ids))
                if hits.size:
                    codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)
                    stored = codes.reshape(size, lists.code_size).view(np.float32)
                    yield stored, hits, list_ids[hits].astype(np.int64)
            return
        storage = faiss.downcast_index(self._hnsw.storage if self._hnsw else self._index.index)
        total = int(storage.ntotal)
        id_map = faiss.rev_swig_ptr(self._index.id_map.data(), total)
        positions = np.flatnonzero(np.isin(id_map, ids))
        stored = faiss.rev_swig_ptr(storage.get_xb(), total * self.dim).reshape(total, self.dim)
        yield stored, positions, id_map[positions].astype(np.int64)

    # --- changes ---------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(ids.size, -1)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"index holds {self.dim}-d vectors, got {vectors.shape[1]}-d")
        if self._index is None:  # an IVF index that was never trained: train on these
            self._train_ivf(vectors)
        assert self._index is not None
        self._index.add_with_ids(vectors, ids)
        if self._gpu_index is not None:
            try:
                self._gpu_index.add_with_ids(vectors, ids)
            except RuntimeError:
                self._gpu_index = None  # re-copied from the CPU index at the next search

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); the number of vectors removed.

        Each removed vector is first overwritten with zeros where FAISS stores it: FAISS's
        own removal moves other vectors over the gap, and the slot past the new end (which
        held the removed vector when it was the last one) would otherwise keep its bytes.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if self._hnsw is not None:
            ids = np.setdiff1d(ids, np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
        if ids.size == 0 or self._index is None:
            return 0
        self._gpu_index = None
        zeroed = self._zero_stored(ids)
        if self._hnsw is None:
            return int(self._index.remove_ids(ids))
        # HNSW cannot unlink nodes: the zeroed node stays in the graph, excluded from results.
        self._tombstones.update(int(i) for i in zeroed)
        self._selector = None
        return int(zeroed.size)

    def _zero_stored(self, ids: np.ndarray) -> np.ndarray:
        """Overwrite the stored vectors of `ids` with zeros in place; the ids found."""
        found: list[np.ndarray] = []
        for stored, rows, located in self._located(ids):
            stored[rows] = 0.0
            found.append(located)
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    # --- search ----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        size = len(self)
        k = min(k, size)
        if k <= 0 or self._index is None:
            empty = np.zeros((len(queries), 0))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64))
        if self.kind == "flat" and not self._use_gpu:
            return self._exact_search(queries, k)
        if self._hnsw is not None:
            params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            if self._tombstones:
                params.sel = self._tombstone_selector()
            similarities, ids = self._index.search(queries, k, params=params)
        else:
            similarities, ids = self._searcher().search(queries, k)
        return SearchResult(similarities.astype(np.float32), ids.astype(np.int64))

    def _exact_search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Exact search as one BLAS matrix product over FAISS's own storage (no copy).

        FAISS `IndexFlatIP.search` was 2-5x slower than this on 2 CPU cores at 100k-1M faces
        (bench/gallery_search.py): its top-k selection costs more than the product. FAISS
        still owns the vectors and does additions and removals.
        """
        assert self._index is not None
        flat = faiss.downcast_index(self._index.index)
        total = int(flat.ntotal)
        stored = faiss.rev_swig_ptr(flat.get_xb(), total * self.dim).reshape(total, self.dim)
        id_map = faiss.rev_swig_ptr(self._index.id_map.data(), total)
        similarities = np.empty((len(queries), k), np.float32)
        positions = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), EXACT_QUERY_BLOCK):
            block = queries[start : start + EXACT_QUERY_BLOCK]
            scores = block @ stored.T
            top = (
                np.argpartition(-scores, k - 1, axis=1)[:, :k]
                if k < total
                else np.broadcast_to(np.arange(total), scores.shape)
            )
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            similarities[start : start + len(block)] = np.take_along_axis(top_scores, order, 1)
            positions[start : start + len(block)] = np.take_along_axis(top, order, 1)
        return SearchResult(similarities, id_map[positions].astype(np.int64))

    def _tombstone_selector(self) -> faiss.IDSelector:
        if self._selector is None:
            dead = np.fromiter(self._tombstones, np.int64, len(self._tombstones))
            batch = faiss.IDSelectorBatch(dead)
            self._selector_parts = batch  # IDSelectorNot does not own it: keep it alive
            self._selector = faiss.IDSelectorNot(batch)
        return self._selector

    def _searcher(self) -> faiss.Index:
        assert self._index is not None
        if not self._use_gpu:
            return self._index
        if self._gpu_index is None:
            try:
                if self._gpu_resources is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
            except RuntimeError as error:  # e.g. out of GPU memory: keep serving from CPU
                logger.warning("GPU index copy failed (%s); searching on the CPU", error)
                self._use_gpu = False
                return self._index
        return self._gpu_index
