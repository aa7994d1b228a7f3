import json
from pathlib import Path

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


def candidate(kind, latency_ms, recall=1.0, item_recall=1.0):
    return {"kind": kind, "latency_ms": latency_ms, "recall_at_k": recall, "recall_at_k_item_queries": item_recall}


def test_the_choice_is_the_fastest_index_that_reaches_the_recall_floor():
    exact = candidate("flat", 2.0)
    assert ix.choose([exact, candidate("ivf", 0.5), candidate("hnsw", 0.3)], 0.95) == "hnsw"
    # faster but under the floor, on user or on item queries: not chosen
    assert ix.choose([exact, candidate("ivf", 0.5), candidate("hnsw", 0.3, recall=0.94)], 0.95) == "ivf"
    assert ix.choose([exact, candidate("ivf", 0.5), candidate("hnsw", 0.3, item_recall=0.9)], 0.95) == "ivf"
    assert ix.choose([exact, candidate("ivf", 0.1, recall=0.5)], 0.95) == "flat"
    # exact search stays unless an approximate index saves EXACT_MARGIN_MS per query
    assert ix.choose([candidate("flat", 0.06), candidate("ivf", 0.06 - ix.EXACT_MARGIN_MS / 2)], 0.95) == "flat"


def test_auto_measures_every_candidate_and_serves_one_that_obeys_the_floor(tmp_path):
    items = clustered(20_000)
    queries = clustered(300, seed=3)
    index = ix.build_index(items, np.arange(20_000), queries, "auto", k=10, target_recall=0.95)
    candidates = {c["kind"]: c for c in index.info.candidates}
    assert sorted(candidates) == sorted(ix.CANDIDATES)
    assert all(c["latency_ms"] > 0 and c["build_s"] > 0 for c in candidates.values())
    assert candidates["flat"]["recall_at_k"] == 1.0
    chosen = candidates[index.info.kind]
    assert index.info.kind == ix.choose(index.info.candidates, 0.95)
    assert min(chosen["recall_at_k"], chosen["recall_at_k_item_queries"]) >= 0.95
    assert (index.info.recall_at_k, index.info.params) == (chosen["recall_at_k"], chosen["params"])
    truth = ix.exact_truth(items, np.arange(20_000), queries, 10)  # the kept index is the one measured
    assert ix.recall_against(index, truth, items, pd.Index(np.arange(20_000)), 10) >= 0.95
    ix.save_index(index, tmp_path)
    assert load_index(tmp_path).info == index.info
    assert ix.satisfies(json.loads((tmp_path / ix.INFO_FILE).read_text()), "auto", 10)
    assert ix.satisfies(json.loads((tmp_path / ix.INFO_FILE).read_text()), index.info.kind, 10)


def test_ivf_lists_grow_with_the_catalog_up_to_the_cap():
    assert ix.ivf_lists(100_000) == 1024
    assert ix.ivf_lists(1_000_000) == 4096
    assert ix.ivf_lists(10_000_000) == ix.MAX_IVF_LISTS == 4096
    assert ix.ivf_lists(1_000) <= 1_000 // 39


def test_auto_measures_the_costly_kinds_only_where_their_build_fits():
    assert ix.candidate_kinds(10) == ["flat", "ivf", "hnsw"]  # too few items to train 4-bit codes
    assert ix.candidate_kinds(1_000_000) == list(ix.KINDS)
    assert ix.candidate_kinds(2_000_000) == list(ix.KINDS)
    assert ix.candidate_kinds(10_000_000) == ["flat", "ivf"]


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


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
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
    with pytest.raises(ValueError, match="flat, ivf, hnsw, ivfpq"):
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


@pytest.mark.parametrize("kind, mapped", [("ivf", ix.IVF_DATA_FILE), ("ivfpq", ix.VECTORS_FILE)])
def test_the_bulk_of_an_ann_index_is_memory_mapped_from_its_own_file(kind, mapped, tmp_path):
    """What lets a model's instances share one copy: IVF's lists and IVF-PQ's exact vectors are
    not read into each process but mapped from their file, read-only, found in a moved folder."""
    items = clustered(5_000)
    index = ix.build_index(items, np.arange(5_000) * 3, clustered(100, seed=4), kind, k=10)
    ix.save_index(index, tmp_path / "a")
    assert (tmp_path / "a" / mapped).stat().st_size >= items.nbytes
    assert (tmp_path / "a" / ix.INDEX_FILE).stat().st_size < items.nbytes / 4
    moved = tmp_path / "moved"
    (tmp_path / "a").rename(moved)
    (moved / mapped).chmod(0o444)
    loaded = load_index(moved)
    assert str(moved / mapped) in Path("/proc/self/maps").read_text()
    np.testing.assert_array_equal(loaded.search(items[:50], 10)[1], index.search(items[:50], 10)[1])
    assert set(loaded.search(items[:50], 10)[1].reshape(-1)) <= set(np.arange(5_000) * 3)  # raw ids, not rows


def test_auto_on_a_tiny_catalog_skips_what_cannot_be_trained():
    """Ten items: no IVF-PQ (its codes need more training points), exact search served."""
    index = ix.build_index(clustered(10), np.arange(10), clustered(3, seed=5), "auto", k=5)
    assert [c["kind"] for c in index.info.candidates] == ["flat", "ivf", "hnsw"]
    assert index.info.kind == "flat"


def test_an_index_saved_over_another_leaves_none_of_its_files(tmp_path):
    items = clustered(2_000)
    ix.save_index(ix.build_index(items, np.arange(2_000), items[:50], "ivfpq", k=10), tmp_path)
    ix.save_index(ix.build_index(items, np.arange(2_000), items[:50], "ivf", k=10), tmp_path)
    assert not (tmp_path / ix.VECTORS_FILE).exists()
    ix.save_index(ix.build_index(items, np.arange(2_000), items[:50], "flat", k=10), tmp_path)
    assert not (tmp_path / ix.IVF_DATA_FILE).exists()
    assert load_index(tmp_path).info.kind == "flat"


def test_an_explicit_kind_is_satisfied_by_the_same_kind_chosen_by_measurement():
    info = {"kind": "ivf", "items": 100, "k": 10, "candidates": [{"kind": "flat"}, {"kind": "ivf"}]}
    assert ix.satisfies(info, "ivf", 10) and ix.satisfies(info, "auto", 10)
    assert not ix.satisfies(info, "hnsw", 10) and not ix.satisfies(info, "ivf", 20)
    assert not ix.satisfies({**info, "candidates": []}, "auto", 10)  # an older build's size rule: measured again


def test_the_search_parameter_is_the_smallest_that_reaches_the_target_within_an_eighth():
    """Doubled until the target is reached, then bisected: a value 1/8 lower misses it."""
    items, queries = clustered(20_000), clustered(300, seed=3)
    index = ix.build_index(items, np.arange(20_000), queries, "ivf", k=10, target_recall=0.95)
    nprobe = index.info.params["nprobe"]
    assert min(index.info.recall_at_k, index.info.recall_at_k_item_queries) >= 0.95
    assert nprobe & (nprobe - 1), f"nprobe {nprobe} is still a power of two: not narrowed"  # this data needs it
    item_queries = items[np.random.default_rng(0).permutation(20_000)[:300]]  # as build_index draws them
    ix.set_search_params(index.index, {"nprobe": nprobe - max(1, nprobe // ix.KNOB_PRECISION)})
    lower = [ix.recall_against(index, ix.exact_truth(items, np.arange(20_000), q, 10), items, pd.Index(np.arange(20_000)), 10)
             for q in (queries, item_queries)]
    assert min(lower) < 0.95, lower
