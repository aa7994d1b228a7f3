"""Where the Two-Tower loses to EASE and matrix factorization on MovieLens-100K: test Recall@10
by how many training items a user has, and the share of hits on popular and rare items.

    .venv/bin/python scripts/quality_gap.py              # random split, seed 0 (about 7 minutes)

Trains the default Two-Tower and matrix factorization of `build-ensemble build --dataset
movielens-100k` on one split and fits EASE with the λ the benchmark chooses; prints two tables
and writes benchmarks/quality_gap.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

from build_ensemble import baselines  # noqa: E402
from build_ensemble import constants as C  # noqa: E402
from build_ensemble import evaluate as ev  # noqa: E402
from build_ensemble.config import make_config  # noqa: E402
from build_ensemble.progress import Reporter  # noqa: E402
from build_ensemble.train import train_and_embed  # noqa: E402

ACTIVITY = [(0, 20), (20, 50), (50, 100), (100, 200), (200, 10_000)]  # training items per user


def top10_hits(scorer, test, exclude, rows) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top 10 (``[len(rows), 10]`` item columns) and whether each is a test item."""
    ranked = ev.top_k(scorer, rows, 10, test.shape[1], exclude)
    hits = np.array([np.isin(ranked[i], test.indices[test.indptr[r]:test.indptr[r + 1]]) for i, r in enumerate(rows)])
    return ranked, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="random", choices=["random", "temporal"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(bq.ROOT / "benchmarks" / "quality_gap.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quality-gap-") as tmp:
        prepared = bq.prepare(args.split, args.seed, Path(tmp) / "data")
        data, users, items = prepared
        train, valid, test = ev.split_matrices(data, ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy()))
        known = bq.known_history(train, valid)
        scorers = {}
        for name, overrides in bq.MODELS.items():
            config = make_config(overrides={"dataset": "movielens-100k", "split": args.split, "seed": args.seed, **overrides})
            _, user_vectors, item_vectors, _ = train_and_embed(config, data, users, items, Reporter())
            scorers[name] = ev.dot_scorer(user_vectors, item_vectors)
        chosen = next(r["chosen"] for r in bq.anchor_rows(prepared, args.split, args.seed) if r["model"] == "ease")
        scorers["ease"] = baselines.history_scorer(known, baselines.ease_weights(train, chosen))

    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    n_test = np.diff(test.indptr)[rows]
    n_train = np.diff(train.indptr)[rows]
    clicks = np.asarray(train.sum(axis=0)).ravel()
    head = clicks >= np.quantile(clicks[clicks > 0], 0.8)  # the top 20% of clicked items by training clicks
    report = {"split": args.split, "seed": args.seed, "ease_l2": chosen, "activity": [], "hits": {}}
    ranked = {name: top10_hits(s, test, known, rows) for name, s in scorers.items()}
    hits = {name: h for name, (_, h) in ranked.items()}
    print(f"{'training items':<16}{'users':>6}" + "".join(f"{name:>12}" for name in hits))
    for low, high in ACTIVITY:
        mask = (n_train >= low) & (n_train < high)
        recall = {name: round(float((h[mask].sum(axis=1) / n_test[mask]).mean()), 4) for name, h in hits.items()}
        report["activity"].append({"training_items": [low, high], "users": int(mask.sum()), "recall@10": recall})
        print(f"{f'{low}-{high}':<16}{int(mask.sum()):>6}" + "".join(f"{recall[n]:>12.4f}" for n in hits))
    print(f"\n{'model':<12}{'hits':>7}{'on head items':>15}{'on tail items':>15}")
    for name, h in hits.items():
        on_head = int((h & head[ranked[name][0]]).sum())
        report["hits"][name] = {"total": int(h.sum()), "head": on_head, "tail": int(h.sum()) - on_head}
        print(f"{name:<12}{int(h.sum()):>7}{on_head:>15}{int(h.sum()) - on_head:>15}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
