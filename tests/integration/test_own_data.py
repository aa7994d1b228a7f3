"""Your own data end to end: a dataset spec with string ids and every feature kind, built, served by a
real tritonserver and asked over KServe v2 JSON with BYTES ids."""

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.pipeline import build
from build_ensemble.server.launch import TritonServer
from examples.own_data import write_own_data

from .conftest import server_spec


@pytest.fixture(scope="module")
def own_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    spec = write_own_data(root / "data")
    config = make_config(overrides={
        "dataset_spec": str(spec), "epochs": 3, "index": "flat", "out": str(root / "artifacts"),
        "feature_repo": str(root / "feature_repo"), "repository": str(root / "model_repository"),
    })
    return build(config)


@pytest.fixture(scope="module")
def own_served(own_build, tmp_path_factory):
    spec = server_spec(own_build.repository, tmp_path_factory.mktemp("own_serve"))
    with TritonServer(spec):
        yield spec


def _infer(spec, user_ids: list) -> dict:
    body = {"inputs": [{"name": C.INPUT_USER_ID, "shape": [len(user_ids), 1], "datatype": "BYTES", "data": user_ids}]}
    request = urllib.request.Request(f"http://{spec.http_url}/v2/models/{C.MODEL_NAME}/infer", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs = json.loads(response.read())["outputs"]
    return {o["name"]: (o["datatype"], np.array(o["data"], dtype=object).reshape(o["shape"])) for o in outputs}


def _offline_top10(out, vectors: np.ndarray) -> np.ndarray:
    items = pd.read_parquet(out / C.ITEM_EMBEDDINGS_FILE)
    scores = vectors @ np.stack(items["embedding"]).T
    return items[C.ITEM_ID].to_numpy()[np.argsort(-scores, axis=1, kind="stable")[:, :10]]


def test_the_build_reads_every_kind_and_serves_strings(own_build):
    manifest = own_build.manifest
    assert manifest["graph"]["string_ids"] == [C.USER_ID, C.ITEM_ID]
    kinds = {e["column"]: e["kind"] for e in manifest["graph"]["encoders"]}
    assert kinds == {C.USER_ID: "categorical", "country": "categorical", "age": "continuous", "interests": "list"}
    assert manifest["query_tower"]["runtime"] == "numpy"  # continuous and list inputs reproduced, verified
    assert manifest["data"]["train_clicks"] < manifest["data"]["train_rows"]  # the label threshold dropped rows
    config = (own_build.repository / C.MODEL_NAME / "config.pbtxt").read_text()
    assert 'name: "user_id"\n  data_type: TYPE_STRING' in config and 'name: "item_ids"\n  data_type: TYPE_STRING' in config
    metrics = own_build.metrics
    assert metrics["two_tower"]["recall@10"] > metrics["random"]["recall@10"]


def test_served_top10_over_json_bytes_equals_offline_for_50_users(own_build, own_served):
    users = pd.read_parquet(own_build.out / C.USER_EMBEDDINGS_FILE)
    chosen = users.iloc[::6].head(50)
    outputs = _infer(own_served, chosen[C.USER_ID].tolist())
    datatype, served = outputs[C.OUTPUT_ITEM_IDS]
    assert datatype == "BYTES" and served.shape == (50, 10)
    expected = _offline_top10(own_build.out, np.stack(chosen["embedding"]))
    np.testing.assert_array_equal(served, expected)
    assert not outputs[C.OUTPUT_FALLBACK][1].astype(bool).any()


def test_an_unknown_string_user_gets_the_popular_items(own_build, own_served):
    outputs = _infer(own_served, ["nobody-at-all"])
    popular = pd.read_parquet(own_build.out / C.INDEX_DIR / "popular.parquet")[C.ITEM_ID].head(10).tolist()
    assert outputs[C.OUTPUT_FALLBACK][1].tolist() == [[True]]
    assert outputs[C.OUTPUT_ITEM_IDS][1][0].tolist() == popular


def test_a_missing_continuous_feature_is_served_with_the_filled_value_and_flagged(own_build, tmp_path):
    import shutil

    from feast import FeatureStore

    from build_ensemble.serving.tower import NumpyTower
    from build_ensemble.tower import numpy_inputs
    from build_ensemble.workflow import USER_SUBGRAPH, encode, load_workflow

    repository = tmp_path / "model_repository"
    shutil.copytree(own_build.repository, repository)
    shutil.copytree(own_build.feature_repo, tmp_path / "feature_repo")
    users = pd.read_parquet(own_build.out / C.USER_FEATURES_FILE)
    row = users[users[C.USER_ID] == "user-0005"].assign(age=np.nan)
    now = pd.Timestamp.now(tz="UTC")
    store_row = row.assign(**{C.EVENT_TIMESTAMP: now, C.CREATED_TIMESTAMP: now})
    FeatureStore(repo_path=str(tmp_path / "feature_repo")).write_to_online_store(C.USER_VIEW, store_row)
    # Offline: NVTabular's own transform fills the missing age (the training median), then the verified tower.
    workflow = load_workflow(own_build.out / C.WORKFLOW_DIR)
    encoded = encode(workflow, USER_SUBGRAPH, row)
    tower = NumpyTower.load(own_build.out / C.COMPILED_TOWER_DIR)
    expected = _offline_top10(own_build.out, tower(numpy_inputs(encoded, ("interests",))))
    spec = server_spec(repository, tmp_path / "state")
    with TritonServer(spec):
        outputs = _infer(spec, ["user-0005", "user-0006"])
    assert outputs[C.OUTPUT_PARTIAL][1].tolist() == [[True], [False]]
    assert outputs[C.OUTPUT_FALLBACK][1].tolist() == [[False], [False]]
    np.testing.assert_array_equal(outputs[C.OUTPUT_ITEM_IDS][1][:1], expected)
