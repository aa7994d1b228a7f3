"""The build on real data (MovieLens-100K): outputs, raw ids, metrics recomputed independently."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.datasets.movielens import fetch_wheel, load_tables
from build_ensemble.pipeline import evaluate_build

EXPORTED = [
    C.QUERY_TOWER_DIR, C.ITEM_TOWER_DIR, C.WORKFLOW_DIR, C.USER_FEATURES_FILE, C.ITEM_FEATURES_FILE,
    C.ITEM_EMBEDDINGS_FILE, C.USER_EMBEDDINGS_FILE, C.TRAIN_FILE, C.VALID_FILE, C.TEST_FILE,
    C.METRICS_FILE, C.MANIFEST_FILE, C.LOSS_PLOT_FILE, C.INDEX_DIR,
]


def test_every_documented_output_exists(movielens_build):
    for name in EXPORTED:
        assert (movielens_build.out / name).exists(), name
    assert (movielens_build.out / C.QUERY_TOWER_DIR / "saved_model.pb").exists()
    assert not (movielens_build.out / ".work").exists()
    assert not list(movielens_build.out.parent.glob("*.partial"))


def test_raw_ids_map_back_exactly(movielens_build):
    interactions, users, items = load_tables(fetch_wheel("~/.cache/build-ensemble"))
    out = movielens_build.out
    user_ids = pd.read_parquet(out / C.USER_EMBEDDINGS_FILE)[C.USER_ID]
    item_ids = pd.read_parquet(out / C.ITEM_EMBEDDINGS_FILE)[C.ITEM_ID]
    assert sorted(user_ids) == sorted(users[C.USER_ID]) and sorted(item_ids) == sorted(items[C.ITEM_ID])
    splits = pd.concat([pd.read_parquet(out / f) for f in (C.TRAIN_FILE, C.VALID_FILE, C.TEST_FILE)])
    key = [C.USER_ID, C.ITEM_ID, C.TIMESTAMP]
    pd.testing.assert_frame_equal(
        splits[key].sort_values(key).reset_index(drop=True), interactions[key].sort_values(key).reset_index(drop=True)
    )
    features = pd.read_parquet(out / C.USER_FEATURES_FILE).set_index(C.USER_ID)
    assert features.loc[1, "occupation"] == "technician" and features.loc[1, "zip_prefix"] == "85"


def test_recent_items_are_the_latest_known_before_test(movielens_build):
    """The temporal split's defaults add recent_item_1..5: in the served user table, each user's
    latest training or validation items; training rows carry the items before them."""
    out = movielens_build.out
    columns = [f"recent_item_{k}" for k in range(1, 6)]
    known = pd.concat([pd.read_parquet(out / C.TRAIN_FILE), pd.read_parquet(out / C.VALID_FILE)])
    known = known.sort_values([C.USER_ID, C.TIMESTAMP, C.ITEM_ID])
    expected = known.groupby(C.USER_ID)[C.ITEM_ID].apply(lambda s: s.tolist()[::-1][:5])
    served = pd.read_parquet(out / C.USER_FEATURES_FILE).set_index(C.USER_ID)
    assert served[columns].apply(list, axis=1).to_dict() == expected.to_dict()
    train = pd.read_parquet(out / C.TRAIN_FILE).sort_values([C.USER_ID, C.TIMESTAMP, C.ITEM_ID])
    first = train.groupby(C.USER_ID).head(1)
    assert (first[columns] == -1).all().all()
    manifest = json.loads((out / C.MANIFEST_FILE).read_text())
    assert set(columns) <= set(manifest["graph"]["user_features"]) and set(columns) <= set(manifest["graph"]["tower_inputs"])


def test_recall_recomputed_from_the_embeddings_matches_metrics(movielens_build):
    """Dot products of the exported embeddings, seen items masked, give metrics.json's Recall@10."""
    out = movielens_build.out
    users = pd.read_parquet(out / C.USER_EMBEDDINGS_FILE)
    items = pd.read_parquet(out / C.ITEM_EMBEDDINGS_FILE)
    u = np.stack(users["embedding"]); i = np.stack(items["embedding"])
    urow = {v: n for n, v in enumerate(users[C.USER_ID])}
    icol = {v: n for n, v in enumerate(items[C.ITEM_ID])}
    seen = pd.concat([pd.read_parquet(out / C.TRAIN_FILE), pd.read_parquet(out / C.VALID_FILE)])
    test = pd.read_parquet(out / C.TEST_FILE)
    scores = u @ i.T
    for user, item in zip(seen[C.USER_ID], seen[C.ITEM_ID]):
        scores[urow[user], icol[item]] = -np.inf
    recalls = []
    for user, group in test.groupby(C.USER_ID):
        top = set(items[C.ITEM_ID].to_numpy()[np.argsort(-scores[urow[user]])[:10]])
        recalls.append(len(top & set(group[C.ITEM_ID])) / group[C.ITEM_ID].nunique())
    metrics = json.loads((out / C.METRICS_FILE).read_text())
    assert round(float(np.mean(recalls)), 3) == round(metrics["two_tower"]["recall@10"], 3)
    assert metrics["users"] == len(recalls) == 943


def test_metrics_have_baselines_and_the_model_learns(movielens_build):
    metrics = movielens_build.metrics
    assert set(metrics) >= {"two_tower", "most_popular", "random"}
    assert metrics["random"]["recall@10"] < 0.03
    assert metrics["two_tower"]["recall@10"] > 5 * metrics["random"]["recall@10"]


def test_manifest_records_versions_options_data_and_timings(movielens_build):
    manifest = json.loads((movielens_build.out / C.MANIFEST_FILE).read_text())
    assert manifest["packages"]["nvtabular"] == metadata.version("nvtabular")
    assert manifest["options"]["dataset"] == "movielens-100k"
    assert len(manifest["data"]["fingerprint"]) == 64 and manifest["data"]["users"] == 943
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["recall_at_k"] == 1.0
    assert set(manifest["timings_seconds"]) >= {"data", "workflow", "train", "evaluate", "index", "feature_store", "export"}
    assert manifest["metrics"] == movielens_build.metrics
    assert manifest["query_tower"]["runtime"] == "numpy" and manifest["query_tower"]["max_abs_diff"] < 1e-4


def test_evaluate_command_reproduces_the_build_metrics(movielens_build):
    cli = str(Path(sys.executable).parent / "build-ensemble")
    result = subprocess.run([cli, "evaluate", "--out", str(movielens_build.out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["two_tower"] == pytest.approx(movielens_build.metrics["two_tower"])
    assert evaluate_build(movielens_build.out, ks=[5, 20])["two_tower"].keys() == {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}


def test_feast_cli_in_the_built_feature_repo(movielens_build):
    feast = str(Path(sys.executable).parent / "feast")
    env = {"FEAST_USAGE": "False", "PATH": str(Path(sys.executable).parent)}
    for args in (["apply"], ["feature-views", "list"]):
        result = subprocess.run([feast, *args], cwd=movielens_build.feature_repo, capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert "user_features" in result.stdout and "item_features" in result.stdout
