"""Build stage: full-catalog evaluation, Recall@k and NDCG@k over every item, for any scorer.

The Two-Tower model and the baselines (most-popular, random) are scored by the same code:
a scorer maps a batch of user rows to a ``[batch, num_items]`` score matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from build_ensemble import constants as C
from build_ensemble.artifacts import StageResult, read_embeddings, write_json
from build_ensemble.config import BuildConfig
from build_ensemble.errors import ArtifactNotFoundError
from build_ensemble.prepared import PreparedData

Scorer = Callable[[np.ndarray], np.ndarray]
SCORE_BUDGET = 2**24  # floats per scored block (64 MB)


def run(config: BuildConfig, build_dir: Path) -> StageResult:
    """Score the build's test split with its exported embeddings and write ``metrics.json``
    (with the best epoch and its validation metrics from the training history).

    Args:
        config: ``ks``, ``exclude_seen`` and ``seed`` (random baseline) are used.
        build_dir: build folder after the training stage.
    """
    metrics = score_build(build_dir, config.ks, config.exclude_seen, config.seed)
    history = json.loads((build_dir / C.HISTORY_FILE).read_text())
    metrics["best_epoch"] = history["best_epoch"]
    best = history["history"][history["best_epoch"] - 1]
    metrics["validation"] = {k: v for k, v in best.items() if k.startswith("valid_")}
    path = write_json(build_dir / C.METRICS_FILE, metrics)
    return StageResult([path], {"metrics": metrics})


def score_build(build_dir: Path, ks: list, exclude_seen: bool, seed: int = 0) -> dict:
    """Test metrics of a build, from its exported embeddings and splits.

    Raises:
        ArtifactNotFoundError: if the build folder lacks embeddings or splits.
    """
    build_dir = Path(build_dir)
    for name in (C.USER_EMBEDDINGS_FILE, C.ITEM_EMBEDDINGS_FILE, C.TEST_FILE):
        if not (build_dir / name).exists():
            raise ArtifactNotFoundError(f"{build_dir / name} is missing: is {build_dir} a finished build?")
    user_ids, users = read_embeddings(build_dir / C.USER_EMBEDDINGS_FILE, C.USER_ID)
    item_ids, items = read_embeddings(build_dir / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID)
    return score_embeddings(PreparedData.load(build_dir), Catalog(user_ids, item_ids), users, items, ks, exclude_seen, seed)


def score_embeddings(
    data: PreparedData,
    catalog: "Catalog",
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    ks: list,
    exclude_seen: bool,
    seed: int = 0,
) -> dict:
    """Test Recall@k / NDCG@k of the Two-Tower embeddings and of the most-popular and random baselines.

    The model scores by dot product; the baselines are scored by the same code. With
    ``exclude_seen``, training and validation items are masked.

    Args:
        data: prepared splits.
        catalog: user and item row order of the vectors.
        user_vectors: ``[num_users, dim]`` float32.
        item_vectors: ``[num_items, dim]`` float32.
        ks: cut-offs.
        exclude_seen: mask seen items.
        seed: seed of the random baseline.
    """
    train, valid, test = split_matrices(data, catalog)
    exclude = (train + valid) if exclude_seen else None
    scorers = {
        "two_tower": dot_scorer(user_vectors, item_vectors),
        "most_popular": popularity_scorer(train),
        "random": random_scorer(len(catalog.item_ids), seed),
    }
    metrics = {"split": "test", "ks": list(ks), "exclude_seen": bool(exclude_seen)}
    for name, scorer in scorers.items():
        result = evaluate(scorer, test, ks, exclude=exclude)
        metrics["users"] = result.pop("users")
        metrics[name] = result
    return metrics


def split_matrices(data: PreparedData, catalog: "Catalog") -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """The training, validation and test clicks as ``[users, items]`` 0/1 matrices in the catalog's order."""
    columns = [C.USER_ID, C.ITEM_ID, C.CLICK]
    train, valid, test = (catalog.matrix(data.read_split(s, columns)) for s in ("train", "valid", "test"))
    return train, valid, test


@dataclass
class Catalog:
    """Row order of users and items shared by embeddings, scores and interaction matrices.

    Attributes:
        user_ids: ``[num_users]`` raw user ids (int64 or strings).
        item_ids: ``[num_items]`` raw item ids (the whole catalog).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray

    def matrix(self, interactions: pd.DataFrame) -> sp.csr_matrix:
        """``[num_users, num_items]`` 0/1 matrix of the clicked interactions given (raw ids)."""
        clicked = interactions[interactions[C.CLICK] == 1] if C.CLICK in interactions else interactions
        rows = pd.Index(self.user_ids).get_indexer(clicked[C.USER_ID].to_numpy())
        cols = pd.Index(self.item_ids).get_indexer(clicked[C.ITEM_ID].to_numpy())
        if (rows < 0).any() or (cols < 0).any():
            raise ValueError("interactions refer to users or items outside the catalog")
        data = np.ones(len(rows), dtype=np.float32)
        shape = (len(self.user_ids), len(self.item_ids))
        matrix = sp.csr_matrix((data, (rows, cols)), shape=shape)
        matrix.data[:] = 1.0  # duplicates count once
        return matrix


def dot_scorer(user_embeddings: np.ndarray, item_embeddings: np.ndarray) -> Scorer:
    """Scores by inner product.

    Args:
        user_embeddings: ``[num_users, dim]`` float32.
        item_embeddings: ``[num_items, dim]`` float32.
    """
    items_t = np.ascontiguousarray(item_embeddings.T)
    return lambda rows: user_embeddings[rows] @ items_t


def popularity_scorer(train: sp.csr_matrix) -> Scorer:
    """Most-popular baseline: every user gets the items by training click count."""
    counts = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    return lambda rows: np.broadcast_to(counts, (len(rows), counts.shape[0])).copy()


def random_scorer(num_items: int, seed: int = 0) -> Scorer:
    """Random baseline: i.i.d. uniform scores (expected Recall@k = k / num_items)."""
    rng = np.random.default_rng(seed)
    return lambda rows: rng.random((len(rows), num_items), dtype=np.float32)


def top_k(
    scorer: Scorer, rows: np.ndarray, k: int, num_items: int, exclude: sp.csr_matrix | None = None
) -> np.ndarray:
    """Best ``k`` item columns per user, best first.

    Args:
        scorer: maps ``[batch]`` user rows to ``[batch, num_items]`` scores.
        rows: ``[n]`` int user rows to rank for.
        k: cut-off.
        num_items: number of item columns the scorer returns.
        exclude: ``[num_users, num_items]`` items to mask (seen interactions), or None.

    Returns:
        ``[n, min(k, num_items)]`` int64 item columns.
    """
    kk = min(k, num_items)
    batch = max(1, SCORE_BUDGET // num_items)
    out = [np.zeros((0, kk), dtype=np.int64)]
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        scores = np.array(scorer(chunk), dtype=np.float32)
        if exclude is not None:
            sub = exclude[chunk]
            scores[np.repeat(np.arange(len(chunk)), np.diff(sub.indptr)), sub.indices] = -np.inf
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, axis=1).astype(np.int64))
    return np.concatenate(out)


def ranking_metrics(ranked: np.ndarray, truth: sp.csr_matrix, rows: np.ndarray, ks: list) -> dict:
    """Mean Recall@k and NDCG@k over the given users.

    Recall@k is hits / number of relevant items; NDCG@k divides DCG by the ideal DCG of
    ``min(relevant, k)`` hits.

    Args:
        ranked: ``[n, >= max(ks)]`` item columns, best first.
        truth: ``[num_users, num_items]`` relevant items.
        rows: ``[n]`` user row of each ranked list.
        ks: cut-offs.
    """
    relevant = truth[rows].tocoo()
    n_items = np.int64(truth.shape[1])
    relevant_keys = relevant.row.astype(np.int64) * n_items + relevant.col
    ranked_keys = np.arange(len(rows), dtype=np.int64)[:, None] * n_items + ranked
    hits = np.isin(ranked_keys, relevant_keys)
    n_relevant = np.bincount(relevant.row, minlength=len(rows))
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    metrics = {}
    for k in ks:
        top = hits[:, :k]
        dcg = (top * discounts[:k]).sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(n_relevant, k) - 1]
        metrics[f"recall@{k}"] = float(np.mean(top.sum(axis=1) / n_relevant))
        metrics[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
    return metrics


def evaluate(
    scorer: Scorer,
    truth: sp.csr_matrix,
    ks: list,
    exclude: sp.csr_matrix | None = None,
    max_users: int | None = None,
    seed: int = 0,
) -> dict:
    """Recall@k and NDCG@k of a scorer over the full catalog.

    Users without a relevant item are skipped. With ``max_users``, a seeded sample of the
    eligible users is scored (used for per-epoch validation of large data sets).

    Args:
        scorer: maps ``[batch]`` user rows to ``[batch, num_items]`` scores.
        truth: ``[num_users, num_items]`` relevant (held-out clicked) items.
        ks: cut-offs.
        exclude: items to mask per user (seen interactions), or None.
        max_users: score at most this many users.
        seed: seed of that sample.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "users": n}``.
    """
    rows = np.flatnonzero(np.diff(truth.indptr) > 0)
    if max_users is not None and len(rows) > max_users:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_users, replace=False))
    ranked = top_k(scorer, rows, max(ks), truth.shape[1], exclude)
    return {**ranking_metrics(ranked, truth, rows, ks), "users": int(len(rows))}
