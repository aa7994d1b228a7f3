"""How much a user's latest items say about their next ones, without any model (seconds).

Item-kNN (cosine over the training click matrix) from the user's N latest known items, against
the same from the whole history and most popular, on MovieLens-100K under the bench's protocol
(full catalog, training and validation items masked, test Recall@10 / NDCG@10). "Known"
is training only, or training and validation (history at test time). This is the measurement
behind `--recent-items` (docs/quality.md).

    .venv/bin/python scripts/recency_signal.py [--split temporal] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble import evaluate as ev
from build_ensemble.datasets.movielens import fetch_wheel, load_tables
from build_ensemble.history import latest_items, recent_columns
from build_ensemble.prepared import split_per_user


def item_knn(catalog: ev.Catalog, train, history: pd.DataFrame, n: int | None) -> ev.Scorer:
    """Scores = sum of the cosine similarities of each item to the user's ``n`` latest items (all: None)."""
    matrix = catalog.matrix(train).astype(np.float32)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel()) + 1e-9
    similarity = (matrix.T @ matrix).toarray() / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0)
    if n is None:
        profile = catalog.matrix(history)
    else:
        users = pd.DataFrame({C.USER_ID: catalog.user_ids})
        wide = latest_items(history, users, n).melt(id_vars=C.USER_ID, value_vars=recent_columns(n), value_name=C.ITEM_ID)
        profile = catalog.matrix(wide[wide[C.ITEM_ID] >= 0])
    return lambda rows: np.asarray(profile[rows] @ similarity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="temporal", choices=["random", "temporal"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    interactions, users, items = load_tables(fetch_wheel("~/.cache/build-ensemble"))
    parts = split_per_user(interactions, args.split, args.seed)
    catalog = ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy())
    train, valid, test = (catalog.matrix(parts[s]) for s in ("train", "valid", "test"))
    known = {"training": parts["train"], "training + validation": pd.concat([parts["train"], parts["valid"]])}
    scorers = {"most popular": ev.popularity_scorer(train)}
    for label, history in known.items():
        for n in (5, 20, None):
            items_used = f"{n} latest" if n else "whole history"
            scorers[f"item-kNN, {items_used}, known: {label}"] = item_knn(catalog, parts["train"], history, n)
    print(f"MovieLens-100K, {args.split} split, seed {args.seed}, test")
    print(f"{'scorer':<52}{'recall@10':>10}{'ndcg@10':>10}")
    for name, scorer in scorers.items():
        result = ev.evaluate(scorer, test, [10], exclude=train + valid)
        print(f"{name:<52}{result['recall@10']:>10.4f}{result['ndcg@10']:>10.4f}")


if __name__ == "__main__":
    main()
