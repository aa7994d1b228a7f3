"""Where the Two-Tower loses to EASE and matrix factorization on MovieLens-100K: test Recall@10
by how many training items a user has, the share of hits on popular and rare items, how many
hits the models share, and what the Two-Tower and matrix factorization reach together (their
logits summed, s_tt + a * s_mf with a chosen on validation: one dot product of concatenated
vectors, so still a two-tower model).

    .venv/bin/python scripts/quality_gap.py              # random split, seed 0 (about 7 minutes)
    .venv/bin/python scripts/quality_gap.py --seed 1 --out benchmarks/quality_gap_seed1.json

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
MF_WEIGHTS = [0.25, 0.5, 1.0, 2.0, 4.0]  # a of s_tt + a * s_mf, chosen on validation NDCG@10


def top10_hits(scorer, test, exclude, rows) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top 10 (``[len(rows), 10]`` item columns) and whether each is a test item."""
    ranked = ev.top_k(scorer, rows, 10, test.shape[1], exclude)
    hits = np.array([np.isin(ranked[i], test.indices[test.indptr[r]:test.indptr[r + 1]]) for i, r in enumerate(rows)])
    return ranked, hits


def shared_hits(a: tuple, b: tuple) -> int:
    """Hits in model a's top 10 that model b's top 10 also holds (a hit is a test item, so b hits it too)."""
    (a_ranked, a_hits), (b_ranked, _) = a, b
    return int(sum(np.isin(a_ranked[i][a_hits[i]], b_ranked[i]).sum() for i in range(len(a_ranked))))


def together(logits: dict, train, valid, test, known) -> dict:
    """The summed logits s_tt + a * s_mf: a chosen on validation NDCG@10 (training items masked), scored on test."""
    (tt_users, tt_items), (mf_users, mf_items) = logits["two_tower"], logits["mf"]
    searched = {}
    for a in MF_WEIGHTS:
        scorer = ev.dot_scorer(np.hstack([tt_users, a * mf_users]), np.hstack([tt_items, mf_items]))
        searched[a] = (ev.evaluate(scorer, valid, [10], exclude=train)["ndcg@10"], scorer)
    a = max(searched, key=lambda v: searched[v][0])
    metrics = ev.evaluate(searched[a][1], test, [10], exclude=known)
    return {"a": a, "valid_ndcg@10": {str(v): round(n, 4) for v, (n, _) in searched.items()},
            "recall@10": round(metrics["recall@10"], 4), "ndcg@10": round(metrics["ndcg@10"], 4)}


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
        scorers, logits = {}, {}
        for name, overrides in bq.MODELS.items():
            config = make_config(overrides={"dataset": "movielens-100k", "split": args.split, "seed": args.seed, **overrides})
            _, user_vectors, item_vectors, _ = train_and_embed(config, data, users, items, Reporter())
            scorers[name] = ev.dot_scorer(user_vectors, item_vectors)
            logits[name] = (user_vectors / config.temperature, item_vectors)  # the scale each was trained at
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
    print()
    report["shared_hits"] = {other: shared_hits(ranked["two_tower"], ranked[other]) for other in ("mf", "ease")}
    for other, shared in report["shared_hits"].items():
        print(f"hits of the Two-Tower that {other} also has: {shared} of {int(hits['two_tower'].sum())}")
    report["alone"] = {name: {k: round(v, 4) for k, v in ev.evaluate(s, test, [10], exclude=known).items() if k != "users"}
                       for name, s in scorers.items()}
    report["together"] = together(logits, train, valid, test, known)
    best = report["together"]
    print(f"Two-Tower + {best['a']} x matrix factorization (a chosen on validation): test recall@10 {best['recall@10']:.4f} "
          f"ndcg@10 {best['ndcg@10']:.4f}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
