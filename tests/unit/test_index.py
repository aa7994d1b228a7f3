import numpy as np
import pandas as pd
import pytest

from build_ensemble import index as ix
from build_ensemble.serving.index import load_index


def clustered(n, dim=32, centers=64, seed=0):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, dim)).astype(np.float32)
    points = middle[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return points.astype(np.float32)


def test_auto_is_exact_for_small_catalogs_and_ann_for_large():
    assert ix.choose_kind("auto", 10_000) == "flat"
    assert ix.choose_kind("auto", ix.EXACT_MAX_ITEMS + 1) == "ivf"
    assert ix.choose_kind("hnsw", 10) == "hnsw"


def test_ivf_lists_grow_with_the_catalog():
    assert ix.ivf_lists(100_000) == 1024
    assert ix.ivf_lists(1_000_000) == 4096
    assert ix.ivf_lists(1_000) <= 1_000 // 39


def test_flat_is_exact_and_keeps_raw_int64_ids(tmp_path):
    items = clustered(500)
    ids = np.arange(500, dtype=np.int64) * 10**12 + 7  # beyond int32
    queries = clustered(20, seed=1)
    index = ix.build_index(items, ids, queries, "flat", k=10)
    info = index.info
    assert info.kind == "flat" and info.recall_at_k == 1.0
    scores, found = index.search(queries, 10)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[exact])
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, exact, axis=1), rtol=1e-5)
    ix.save_index(index, tmp_path)
    loaded = load_index(tmp_path)
    assert loaded.info == info
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_is_tuned_to_the_target_recall(kind, tmp_path):
    items = clustered(20_000)
    queries = clustered(200, seed=2)
    index = ix.build_index(items, np.arange(20_000), queries, kind, k=10, target_recall=0.95)
    info = index.info
    assert info.kind == kind and info.recall_at_k >= 0.95
    scores, found = index.search(queries, 10)
    exact = np.take_along_axis(queries @ items.T, found, axis=1)
    np.testing.assert_allclose(scores, exact, rtol=1e-3, atol=1e-3)  # scores are inner products
    truth = ix.exact_truth(items, np.arange(20_000), queries, 10)
    rows = pd.Index(np.arange(20_000))
    assert ix.recall_against(index, truth, items, rows, 10) == pytest.approx(info.recall_at_k, abs=1e-4)
    ix.save_index(index, tmp_path)
    loaded = load_index(tmp_path)  # search parameters come back with it
    assert ix.recall_against(loaded, truth, items, rows, 10) == pytest.approx(info.recall_at_k, abs=1e-4)


def test_unknown_kind():
    with pytest.raises(ValueError, match="flat, ivf or hnsw"):
        ix.build_index(clustered(10), np.arange(10), clustered(2), "annoy")


def test_recall_counts_ties_as_hits():
    """Ten identical items: any ten of them are an exact answer."""
    items = np.vstack([np.ones((10, 4)), np.ones((30, 4)) * 0.1]).astype(np.float32)
    items = np.vstack([items, items[:10]])  # the best vector appears 20 times
    ids = np.arange(len(items))
    query = np.ones((1, 4), dtype=np.float32)
    index = ix.build_index(items, ids, query, "flat", k=10)
    truth = ix.exact_truth(items, ids, query, 10)
    assert ix.recall_against(index, truth, items, pd.Index(ids), 10) == 1.0
    assert index.info.recall_at_k == 1.0 and index.info.recall_at_k_item_queries == 1.0
