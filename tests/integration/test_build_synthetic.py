"""The default data set (synthetic Ali-CCP) through the whole build, and the exported graph run in process."""

import json

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.pipeline import build, evaluate_build
from build_ensemble.serving.runtime import load_ensemble


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    config = make_config(overrides={"rows": 20_000, "epochs": 1, "out": str(root / "artifacts"),
                                    "feature_repo": str(root / "feature_repo"), "repository": str(root / "model_repository")})
    return build(config)


def test_build_outputs_and_metrics(synthetic_build):
    metrics = synthetic_build.metrics
    assert metrics["exclude_seen"] is False and metrics["users"] > 0
    assert metrics == json.loads((synthetic_build.out / C.METRICS_FILE).read_text())
    assert {k: metrics[k] for k in ("two_tower", "most_popular", "random")} == {
        k: v for k, v in evaluate_build(synthetic_build.out).items() if k in ("two_tower", "most_popular", "random")}
    # Items are drawn with a popularity skew: popularity, and the model that learns it, beat random by far.
    items = len(pd.read_parquet(synthetic_build.out / C.ITEM_FEATURES_FILE))
    assert metrics["random"]["recall@10"] < 3 * 10 / items
    assert metrics["most_popular"]["recall@10"] > 3 * metrics["random"]["recall@10"]
    assert metrics["two_tower"]["recall@10"] > 3 * metrics["random"]["recall@10"]
    users = pd.read_parquet(synthetic_build.out / C.USER_FEATURES_FILE)
    assert "user_age" in users.columns and users[C.USER_ID].is_unique


def test_the_index_was_chosen_by_measurement_and_recorded(synthetic_build):
    """The default --index auto: every candidate measured, the choice obeying the rule, in the
    build manifest and in the exported version's manifest."""
    from build_ensemble import index as ix

    built = json.loads((synthetic_build.out / C.MANIFEST_FILE).read_text())["index"]
    served = json.loads((synthetic_build.repository / C.MODEL_NAME / "1" / C.MANIFEST_FILE).read_text())["index"]
    assert [c["kind"] for c in built["candidates"]] == ix.candidate_kinds(built["items"])
    assert built["kind"] == ix.choose(built["candidates"]) and served == built
    chosen = next(c for c in built["candidates"] if c["kind"] == built["kind"])
    assert min(chosen["recall_at_k"], chosen["recall_at_k_item_queries"]) >= ix.TARGET_RECALL


def test_exported_graph_runs_in_process_and_matches_the_embeddings(synthetic_build):
    """The graph loaded from the model repository, without Triton, gives the offline top-k."""
    from merlin.table import TensorTable

    ensemble, runtime = load_ensemble(synthetic_build.repository / C.MODEL_NAME / "1" / "ensemble")
    users = pd.read_parquet(synthetic_build.out / C.USER_EMBEDDINGS_FILE)
    items = pd.read_parquet(synthetic_build.out / C.ITEM_EMBEDDINGS_FILE)
    ids = users[C.USER_ID].to_numpy()[:20]
    unknown = np.array([ids.max() + 1000])
    out = runtime.transform(ensemble, TensorTable({C.USER_ID: np.r_[ids, unknown]}))
    scores = np.stack(users["embedding"])[:20] @ np.stack(items["embedding"]).T
    expected = items[C.ITEM_ID].to_numpy()[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
    got = out[C.OUTPUT_ITEM_IDS].values
    assert got.dtype == np.int64 and got.shape == (21, 10)
    np.testing.assert_array_equal(got[:20], expected)
    assert out[C.OUTPUT_FALLBACK].values.reshape(-1).tolist() == [False] * 20 + [True]
