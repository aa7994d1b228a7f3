"""The README's result tables are the committed benchmark results, so an edit cannot drop or stale them."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _figure(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}"


def test_the_quality_table_holds_every_model_and_split_of_the_benchmark():
    section = _section("Retrieval quality (MovieLens-100K)").splitlines()
    summary = json.loads((ROOT / "benchmarks" / "quality.json").read_text())["summary"]
    assert {row["model"] for row in summary} >= {"two_tower", "mf", "ease", "item_knn", "most_popular"}
    for row in summary:
        for prefix in ("", "frozen_"):  # the test metrics, and the temporal Two-Tower's with frozen recent items
            if f"{prefix}recall@10_mean" not in row:
                continue
            recall = _figure(row[f"{prefix}recall@10_mean"], row[f"{prefix}recall@10_std"])
            ndcg = _figure(row[f"{prefix}ndcg@10_mean"], row[f"{prefix}ndcg@10_std"])
            lines = [line for line in section if f"| {row['split']} |" in line and recall in line and ndcg in line]
            assert lines, f"README has no {row['split']} row with {row['model']}'s {prefix}{recall} / {ndcg}"


def test_the_serving_table_is_the_one_the_benchmark_prints():
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "scripts" / "bench_serving.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.markdown(json.loads((ROOT / "benchmarks" / "serving.json").read_text()))
    assert table in _section("Load tests and performance")
