"""Hyper-parameter search for the Two-Tower model on MovieLens-100K (random split).

Each configuration is the defaults of `build-ensemble build --dataset movielens-100k` plus the
overrides given in the search file; each runs on every seed, and configurations are ranked by
mean validation NDCG@10 (the metric early stopping uses). Test metrics are recorded beside them
but take no part in the choice.

    .venv/bin/python scripts/search_quality.py                          # scripts/quality_search.json, seeds 0 1
    .venv/bin/python scripts/search_quality.py my_search.json --seeds 0 1 2
    .venv/bin/python scripts/search_quality.py --only "cosine, logQ weight 1.25"   # rerun some, keep the rest

Prints a table and writes benchmarks/quality_search.json (with --only, the other
configurations' runs already in that file are kept).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench_quality import ROOT, one_thread_each, prepare, train_and_test


def run(name: str, overrides: dict, seed: int, workdir: Path) -> dict:
    """One configuration on one seed."""
    prepared = prepare("random", seed, workdir)
    metrics, result, _ = train_and_test(prepared, "random", seed, overrides)
    best = result.history[result.best_epoch - 1]
    row = {"name": name, "seed": seed, "valid_ndcg@10": best["valid_ndcg@10"], "valid_recall@10": best["valid_recall@10"],
           "test_ndcg@10": metrics["ndcg@10"], "test_recall@10": metrics["recall@10"],
           "best_epoch": result.best_epoch, "train_seconds": metrics["train_seconds"]}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search", nargs="?", default=str(ROOT / "scripts" / "quality_search.json"),
                        help="JSON mapping a configuration's name to its overrides of the defaults")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="+", help="run only these configurations of the search file")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "quality_search.json"))
    args = parser.parse_args()

    configs = json.loads(Path(args.search).read_text())
    unknown = sorted(set(args.only or []) - set(configs))
    if unknown:
        parser.error(f"--only: not in {args.search}: {', '.join(unknown)}")
    out = Path(args.out)
    kept = []
    if args.only and out.exists():
        kept = [r for r in json.loads(out.read_text())["runs"] if r["name"] in configs and r["name"] not in args.only]
    todo = {name: configs[name] for name in (args.only or configs)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="search-quality-") as tmp:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=one_thread_each) as pool:
            futures = [pool.submit(run, name, overrides, seed, Path(tmp) / f"{n}-{seed}")
                       for n, (name, overrides) in enumerate(todo.items()) for seed in args.seeds]
            rows = kept + [f.result() for f in as_completed(futures)]
    table = (pd.DataFrame(rows).groupby("name", sort=False).mean(numeric_only=True).drop(columns="seed")
             .sort_values("valid_ndcg@10", ascending=False).round(4))
    print(table.to_string())
    out.write_text(json.dumps({
        "ranking": [{"name": name, "overrides": configs[name], **values} for name, values in table.to_dict("index").items()],
        "runs": rows, "seeds": args.seeds, "split": "random",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
