"""Retrieval quality on MovieLens-100K: Two-Tower, matrix factorization, EASE, item-kNN and most-popular, 5 seeds.

Protocol: every rating is an interaction; per-user split 80/10/10 (random, seeded) and
temporal; scores over all items; training and validation items masked at test; users without
test items skipped; Recall@10 and NDCG@10 as mean and standard deviation over the seeds.
Training uses the defaults of `build-ensemble build --dataset movielens-100k` (and `--split
temporal`: the Two-Tower query then also reads the user's 5 latest items; at test time they
include the validation items, known history there, and the frozen_* metrics are the same model
with the items as they were at the end of training). EASE and item-kNN, the item-item anchors,
are fitted on the training split with λ / the neighbour count chosen on validation NDCG@10;
at test they read the user's training and validation items (all known history), and the
train_history_* metrics read the training items only.

    .venv/bin/python scripts/bench_quality.py                 # 5 seeds, both splits
    .venv/bin/python scripts/bench_quality.py --seeds 0 --splits random

Prints a table and writes benchmarks/quality.json and benchmarks/quality_epochs.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from build_ensemble import baselines  # noqa: E402
from build_ensemble import constants as C  # noqa: E402
from build_ensemble import data as data_stage  # noqa: E402
from build_ensemble import evaluate as ev  # noqa: E402
from build_ensemble import workflow as workflow_stage  # noqa: E402
from build_ensemble.config import MODEL_DEFAULTS, SPLIT_DEFAULTS, make_config  # noqa: E402
from build_ensemble.prepared import PreparedData  # noqa: E402
from build_ensemble.progress import Reporter  # noqa: E402
from build_ensemble.train import embed, train_and_embed  # noqa: E402
from build_ensemble.workflow import USER_SUBGRAPH, encode, load_workflow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"two_tower": {}, "mf": {"model": "mf"}}
ANCHORS = {  # weights function and the values searched on validation
    "ease": (baselines.ease_weights, [50, 100, 200, 300, 500, 1000, 2000]),
    "item_knn": (baselines.item_knn_weights, [10, 20, 50, 100, 200, 400]),
}
REFERENCE = {"model": "BPR (RecBole docs, 64-d, random split)", "recall@10": 0.2523, "ndcg@10": 0.2920}


def one_thread_each() -> None:
    """Worker set-up: two single-threaded TensorFlow processes use 2 cores better than one with two threads."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def prepare(split: str, seed: int, folder: Path) -> tuple:
    """Split MovieLens-100K (with the Two-Tower's recent-item features, which matrix factorization
    does not read) and fit the workflow; returns what `train_and_test` needs."""
    folder.mkdir(parents=True)
    config = make_config(overrides={"dataset": "movielens-100k", "split": split, "seed": seed})
    data_stage.run(config, folder, Reporter())
    workflow_stage.run(config, folder)
    data = PreparedData.load(folder)
    return data, pd.read_parquet(data.users), pd.read_parquet(data.items)


def train_and_test(prepared: tuple, split: str, seed: int, overrides: dict) -> tuple[dict, object, dict]:
    """Train with the MovieLens defaults plus ``overrides``; returns (test metrics, TrainResult, most-popular metrics)."""
    data, users, items = prepared
    config = make_config(overrides={"dataset": "movielens-100k", "split": split, "seed": seed, **overrides})
    catalog = ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy())
    start = time.perf_counter()
    result, user_vectors, item_vectors, _ = train_and_embed(config, data, users, items, Reporter())
    seconds = time.perf_counter() - start
    metrics = ev.score_embeddings(data, catalog, user_vectors, item_vectors, [10], exclude_seen=True, seed=seed)
    row = {**metrics["two_tower"], "train_seconds": round(seconds, 1), "best_epoch": result.best_epoch,
           "valid_ndcg@10": result.history[result.best_epoch - 1]["valid_ndcg@10"]}
    if config.recent_items:
        frozen = frozen_history_metrics(data, catalog, result.model, item_vectors, seed)
        row.update({f"frozen_{k}": v for k, v in frozen.items()})
    return row, result, metrics["most_popular"]


def frozen_history_metrics(data, catalog, model, item_vectors, seed: int) -> dict:
    """Test metrics with the recent items frozen at the end of training, as validation saw them
    (the stricter reading: validation interactions not yet known to the query)."""
    workflow = load_workflow(data.root / C.WORKFLOW_DIR)
    schema = workflow.get_subworkflow(USER_SUBGRAPH).output_schema
    users = encode(workflow, USER_SUBGRAPH, pd.read_parquet(data.validation_users))
    vectors = embed(model.query_encoder, users, schema)
    return ev.score_embeddings(data, catalog, vectors, item_vectors, [10], exclude_seen=True, seed=seed)["two_tower"]


def anchor_rows(prepared: tuple, split: str, seed: int) -> list:
    """EASE and item-kNN on one split: each value of its parameter fitted on training and scored on
    validation (training items masked); the best by NDCG@10 is scored on test."""
    data, users, items = prepared
    train, valid, test = ev.split_matrices(data, ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy()))
    known = known_history(train, valid)
    rows = []
    for name, (fit, values) in ANCHORS.items():
        start = time.perf_counter()
        searched, best, weights = {}, None, None
        for value in values:
            candidate = fit(train, value)
            searched[value] = ev.evaluate(baselines.history_scorer(train, candidate), valid, [10], exclude=train)["ndcg@10"]
            if best is None or searched[value] > searched[best]:
                best, weights = value, candidate
        metrics = ev.evaluate(baselines.history_scorer(known, weights), test, [10], exclude=known)
        train_only = ev.evaluate(baselines.history_scorer(train, weights), test, [10], exclude=known)
        rows.append({"model": name, "split": split, "seed": seed, "recall@10": metrics["recall@10"],
                     "ndcg@10": metrics["ndcg@10"], "train_history_recall@10": train_only["recall@10"],
                     "train_history_ndcg@10": train_only["ndcg@10"], "chosen": best,
                     "valid_ndcg@10": {str(k): round(v, 4) for k, v in searched.items()},
                     "train_seconds": round(time.perf_counter() - start, 1), "best_epoch": None})
    return rows


def known_history(train, valid):
    """What is known of each user at test time: their training and validation items, 0/1."""
    return ((train + valid) > 0).astype(np.float32).tocsr()


def run_seed(split: str, seed: int, models: dict, workdir: Path) -> tuple[list, dict]:
    """All models (name: overrides of the defaults) on one split and seed; returns result rows
    and each model's history."""
    prepared = prepare(split, seed, workdir / f"{split}-{seed}")
    rows, histories = [], {}
    for name, overrides in models.items():
        metrics, result, popular = train_and_test(prepared, split, seed, overrides)
        rows.append({"model": name, "split": split, "seed": seed, **metrics})
        histories[name] = result.history
        print(f"    {split} seed {seed} {name}: recall@10 {metrics['recall@10']:.4f} ndcg@10 {metrics['ndcg@10']:.4f} "
              f"({metrics['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
    rows.append({"model": "most_popular", "split": split, "seed": seed, **popular,
                 "train_seconds": 0.0, "best_epoch": None})
    rows.extend(anchor_rows(prepared, split, seed))
    return rows, histories


def summarise(rows: list) -> list:
    """Mean and standard deviation over seeds, per model and split."""
    table = []
    for (model, split), group in pd.DataFrame(rows).groupby(["model", "split"], sort=False):
        row = {"model": model, "split": split, "seeds": len(group)}
        for metric in ("recall@10", "ndcg@10", "frozen_recall@10", "frozen_ndcg@10",
                       "train_history_recall@10", "train_history_ndcg@10"):
            if metric not in group or group[metric].isna().any():
                continue
            values = group[metric].tolist()
            row[f"{metric}_mean"] = round(statistics.mean(values), 4)
            row[f"{metric}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        row["train_seconds_mean"] = round(float(group["train_seconds"].mean()), 1)
        table.append(row)
    return table


def plot(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        axis.plot([h["epoch"] for h in history], [h["valid_recall@10"] for h in history], marker="o", label=name)
    axis.set(xlabel="epoch", ylabel="validation recall@10", title="MovieLens-100K, random split, seed 0")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--splits", nargs="+", default=["random", "temporal"], choices=["random", "temporal"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--jobs", type=int, default=2, help="processes in parallel (default: 2, one per core)")
    parser.add_argument("--repeat-seed", type=int, default=0, help="rerun this seed (random split) to check reproducibility; -1: skip")
    parser.add_argument("--set", default="{}", metavar="JSON",
                        help="overrides of the Two-Tower's defaults, e.g. '{\"negatives\": 1024}' (a try, not the benchmark)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "quality.json"))
    args = parser.parse_args()
    models = {name: MODELS[name] for name in args.models}
    if "two_tower" in models:
        models["two_tower"] = {**models["two_tower"], **json.loads(args.set)}

    started = time.perf_counter()
    tasks = [(split, seed, models) for split in args.splits for seed in args.seeds]
    if args.repeat_seed >= 0:
        first = next(iter(models))
        tasks.append(("random", args.repeat_seed, {first: models[first]}))
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=one_thread_each) as pool:
            futures = [pool.submit(run_seed, split, seed, chosen, Path(tmp) / str(n))
                       for n, (split, seed, chosen) in enumerate(tasks)]
            results = [f.result() for f in futures]
    again = results.pop()[0][0] if args.repeat_seed >= 0 else None
    rows = [row for seed_rows, _ in results for row in seed_rows]
    first_histories = results[0][1] if results else None
    repeat = None
    if again:
        first = next(r for r in rows if r["split"] == "random" and r["seed"] == args.repeat_seed and r["model"] == again["model"])
        repeat = {"model": again["model"], "seed": args.repeat_seed,
                  "recall@10": [first["recall@10"], again["recall@10"]], "ndcg@10": [first["ndcg@10"], again["ndcg@10"]],
                  "max_abs_difference": round(max(abs(first[m] - again[m]) for m in ("recall@10", "ndcg@10")), 5)}

    table = summarise(rows)
    print(f"\n{'model':<14}{'split':<10}{'recall@10':>18}{'ndcg@10':>18}{'train s':>9}")
    for row in table:
        print(f"{row['model']:<14}{row['split']:<10}{row['recall@10_mean']:>10.4f} ± {row['recall@10_std']:.4f}"
              f"{row['ndcg@10_mean']:>10.4f} ± {row['ndcg@10_std']:.4f}{row['train_seconds_mean']:>9.1f}")
    for row in table:
        if "frozen_recall@10_mean" in row:
            print(f"{row['model']:<14}{row['split']:<10}{row['frozen_recall@10_mean']:>10.4f} ± "
                  f"{row['frozen_recall@10_std']:.4f}{row['frozen_ndcg@10_mean']:>10.4f} ± "
                  f"{row['frozen_ndcg@10_std']:.4f}   (recent items frozen at the end of training)")
        if "train_history_recall@10_mean" in row:
            print(f"{row['model']:<14}{row['split']:<10}{row['train_history_recall@10_mean']:>10.4f} ± "
                  f"{row['train_history_recall@10_std']:.4f}{row['train_history_ndcg@10_mean']:>10.4f} ± "
                  f"{row['train_history_ndcg@10_std']:.4f}   (history: training items only)")
    print(f"{'BPR (RecBole, published)':<24}{REFERENCE['recall@10']:>8.4f}{'':>9}{REFERENCE['ndcg@10']:>9.4f}")
    if repeat:
        print(f"\nsame seed twice ({repeat['model']}, seed {repeat['seed']}): max difference {repeat['max_abs_difference']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if first_histories:
        plot(first_histories, out.with_name("quality_epochs.png"))
    report = {
        "summary": table, "runs": rows, "reproducibility": repeat, "published_reference": REFERENCE,
        "overrides": json.loads(args.set), "anchor_values_searched": {k: v for k, (_, v) in ANCHORS.items()},
        "defaults": {k: v for k, v in make_config(overrides={"dataset": "movielens-100k"}).to_dict().items()
                     if k not in ("out", "feature_repo", "repository", "cache_dir")},
        "temporal_defaults": SPLIT_DEFAULTS[("movielens-100k", "temporal")],
        "mf_defaults": MODEL_DEFAULTS[("movielens-100k", "mf")],
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['minutes']} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
