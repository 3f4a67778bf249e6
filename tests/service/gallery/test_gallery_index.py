"""FAISS index kinds: exact and approximate search, removal, and the size-based choice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from gallery_support import clustered

from service.gallery.index import (
    FaceIndex,
    choose_kind,
    gpu_available,
    ivf_list_count,
    ivf_probe_count,
)

DIM = 64
KINDS = ("flat", "hnsw", "ivf")


@pytest.fixture(scope="module")
def gallery_vectors():
    centres, faces, labels = clustered(300, 4, DIM, seed=1)
    ids = np.arange(1000, 1000 + len(faces), dtype=np.int64)
    return centres, faces, labels, ids


def test_choose_kind_is_flat_below_threshold_and_forced_kinds_win():
    assert choose_kind("auto", 10, 100) == "flat"
    assert choose_kind("auto", 100, 100) in ("ivf", "hnsw")
    assert choose_kind("hnsw", 1, 100) == "hnsw"
    assert choose_kind("flat", 10**7, 100) == "flat"


def test_ivf_sizes_follow_gallery_size():
    assert ivf_list_count(1) == 1
    assert ivf_list_count(1_000_000) == 2000  # 2 * sqrt(n)
    assert ivf_list_count(1000) == 25  # capped by 39 training points per list
    assert ivf_probe_count(2000) == 500
    assert ivf_probe_count(25) == 8
    assert ivf_probe_count(4) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_each_face_itself_first(kind, gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, kind, ids, faces, use_gpu=False)
    assert len(index) == len(ids)
    found = index.search(faces, 3)
    assert found.ids.shape == (len(faces), 3)
    assert np.mean(found.ids[:, 0] == ids) >= 0.99
    assert np.all(np.diff(found.similarities, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ("hnsw", "ivf"))
def test_approximate_top1_identity_agrees_with_exact(kind, gallery_vectors):
    centres, faces, labels, ids = gallery_vectors
    rng = np.random.default_rng(5)
    probes = centres + 0.5 * rng.standard_normal(centres.shape).astype(np.float32) / np.sqrt(DIM)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
    exact = FaceIndex.build(DIM, "flat", ids, faces, use_gpu=False).search(probes, 1)
    approx = FaceIndex.build(DIM, kind, ids, faces, use_gpu=False).search(probes, 1)
    exact_labels = [label_of[i] for i in exact.ids[:, 0]]
    approx_labels = [label_of[i] for i in approx.ids[:, 0]]
    assert exact_labels == list(range(len(centres)))  # the data is separable
    assert np.mean(np.equal(exact_labels, approx_labels)) >= 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_removed_ids_never_come_back(kind, gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, kind, ids, faces, use_gpu=False)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # removing twice is a no-op
    assert len(index) == len(ids) - len(gone)
    found = index.search(faces, 10)
    assert not np.isin(found.ids, gone).any()
    kept = np.setdiff1d(ids, gone)
    np.testing.assert_array_equal(index.ids(), kept)
    # A kept face is still found first.
    position = int(np.flatnonzero(ids == kept[0])[0])
    assert index.search(faces[position], 1).ids[0, 0] == kept[0]


def test_hnsw_removal_zeroes_the_stored_vector(gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, "hnsw", ids, faces, use_gpu=False)
    index.remove(ids[:1])
    storage = index._hnsw.storage
    stored = faiss.rev_swig_ptr(
        faiss.downcast_index(storage).get_xb(), storage.ntotal * DIM
    ).reshape(-1, DIM)
    assert not stored[0].any()
    np.testing.assert_allclose(stored[1], faces[1])


def test_hnsw_asks_for_rebuild_when_many_nodes_are_removed(gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, "hnsw", ids, faces, use_gpu=False)
    index.remove(ids[: len(ids) // 10])
    assert not index.needs_rebuild
    index.remove(ids[: len(ids) // 2])
    assert index.needs_rebuild


def test_search_asks_for_more_than_present_returns_what_exists():
    index = FaceIndex.build(8, "flat", np.array([5, 6]), np.eye(8, dtype=np.float32)[:2])
    found = index.search(np.eye(8, dtype=np.float32)[:1], 10)
    assert found.ids.tolist() == [[5, 6]]
    empty = FaceIndex.build(8, "ivf", np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    assert empty.kind == "flat"  # nothing to train an IVF index on
    assert empty.search(np.eye(8, dtype=np.float32)[:1], 5).ids.shape == (1, 0)


def test_untrained_ivf_trains_on_its_first_vectors():
    index = FaceIndex(8, "ivf", use_gpu=False)
    index.add(np.arange(50), np.eye(8, dtype=np.float32)[np.arange(50) % 8])
    assert len(index) == 50 and index.nprobe >= 1


def test_wrong_dimension_is_refused():
    index = FaceIndex(8, "flat", use_gpu=False)
    with pytest.raises(ValueError, match="8-d"):
        index.add(np.array([1]), np.ones((1, 4), np.float32))


def test_gpu_is_used_only_where_faiss_sees_one():
    index = FaceIndex(8, "flat")
    assert index.device == ("gpu" if gpu_available() else "cpu")
    assert FaceIndex(8, "hnsw").device == "cpu"


def test_exact_search_matches_faiss_own_flat_search_after_removals(gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, "flat", ids, faces, use_gpu=False)
    index.remove(ids[1::4])
    reference = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    keep = ~np.isin(ids, ids[1::4])
    reference.add_with_ids(faces[keep], ids[keep])
    queries = faces[:40]  # more than one block of queries
    for k in (1, 7, int(keep.sum()), int(keep.sum()) + 5):
        ours = index.search(queries, k)
        similarities, found = reference.search(queries, min(k, int(keep.sum())))
        np.testing.assert_allclose(ours.similarities, similarities, atol=1e-5)
        # Ties aside, the same ids in the same order.
        assert np.mean(ours.ids == found) > 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_removed_vector_bytes_are_zeroed_in_index_memory(kind, gallery_vectors):
    _, faces, _, ids = gallery_vectors
    index = FaceIndex.build(DIM, kind, ids, faces, use_gpu=False)
    removed = int(ids[-1])
    zeroed = index._zero_stored(np.array([removed]))
    assert zeroed.tolist() == [removed]
    # Reconstruct through FAISS: the stored vector of the removed id is all zeros now.
    if kind == "ivf":  # reconstruct by id needs a direct map; ids are not sequential
        faiss.extract_index_ivf(index._index).set_direct_map_type(faiss.DirectMap.Hashtable)
    assert not np.any(index._index.reconstruct(removed))
    kept = index._index.reconstruct(int(ids[0]))
    np.testing.assert_allclose(kept, faces[0], atol=1e-6)
