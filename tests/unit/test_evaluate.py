import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from build_ensemble import constants as C
from build_ensemble import evaluate as ev


def matrix(rows, n_users=2, n_items=6):
    r, c = zip(*rows) if rows else ((), ())
    return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_users, n_items))


def fixed(scores):
    scores = np.asarray(scores, dtype=np.float32)
    return lambda rows: scores[rows]


def test_recall_and_ndcg_by_hand():
    scores = [[6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]]
    truth = matrix([(0, 1), (0, 5), (1, 0)])
    got = ev.evaluate(fixed(scores), truth, [2])
    # user 0: top-2 = items 0,1 -> one hit of 2 at rank 2; user 1: top-2 = 5,4 -> no hit
    assert got["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert got["ndcg@2"] == pytest.approx(ndcg_user0 / 2)
    assert got["users"] == 2


def test_seen_items_are_masked():
    scores = [[6, 5, 4, 3, 2, 1]]
    truth = matrix([(0, 2)], n_users=1)
    assert ev.evaluate(fixed(scores), truth, [1])["recall@1"] == 0.0
    seen = matrix([(0, 0), (0, 1)], n_users=1)
    assert ev.evaluate(fixed(scores), truth, [1], exclude=seen)["recall@1"] == 1.0


def test_users_without_relevant_items_are_skipped():
    truth = matrix([(1, 3)], n_users=3)
    assert ev.evaluate(fixed(np.ones((3, 6))), truth, [6])["users"] == 1


def test_top_k_is_sorted_and_blocks_do_not_change_it(monkeypatch):
    rng = np.random.default_rng(0)
    scores = rng.random((50, 40)).astype(np.float32)
    whole = ev.top_k(fixed(scores), np.arange(50), 5, 40)
    monkeypatch.setattr(ev, "SCORE_BUDGET", 3 * 40)  # three users per block
    blocked = ev.top_k(fixed(scores), np.arange(50), 5, 40)
    np.testing.assert_array_equal(whole, blocked)
    np.testing.assert_array_equal(whole, np.argsort(-scores, axis=1)[:, :5])


def test_random_baseline_is_near_k_over_n():
    rng = np.random.default_rng(1)
    n_users, n_items = 2000, 200
    truth = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), rng.integers(0, n_items, n_users))), shape=(n_users, n_items))
    recall = ev.evaluate(ev.random_scorer(n_items, seed=0), truth, [10])["recall@10"]
    assert recall == pytest.approx(10 / n_items, abs=0.015)


def test_popularity_ranks_by_training_clicks():
    train = matrix([(0, 4), (1, 4), (1, 2)])
    top = ev.top_k(ev.popularity_scorer(train), np.array([0]), 2, 6)
    assert top.tolist() == [[4, 2]]


def test_catalog_matrix_uses_clicks_and_raw_ids():
    catalog = ev.Catalog(np.array([10, 20]), np.array([7, 8, 9]))
    df = pd.DataFrame({C.USER_ID: [20, 20, 10], C.ITEM_ID: [9, 9, 7], C.CLICK: [1, 1, 0]})
    m = catalog.matrix(df)
    assert m.toarray().tolist() == [[0, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="outside the catalog"):
        catalog.matrix(pd.DataFrame({C.USER_ID: [30], C.ITEM_ID: [7], C.CLICK: [1]}))
