"""The graph's operators on tiny real artifacts: a Feast repository, Categorify files, a NumPy tower, a FAISS index."""

import shutil

import numpy as np
import pandas as pd
import pytest
from merlin.table import TensorTable

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError, RecsysError
from build_ensemble.index import build_index, save_index
from build_ensemble.serving import ops
from build_ensemble.serving.encoding import CATEGORIES_DIR, NULL_CODE, OOV_CODE, unique_file
from build_ensemble.serving.index import POPULAR_FILE
from build_ensemble.serving.runtime import Columns
from build_ensemble.serving.tower import NumpyTower

RNG = np.random.default_rng(0)
ITEMS = RNG.normal(size=(30, 4)).astype(np.float32)
ITEM_IDS = np.arange(30, dtype=np.int64) * 1000 + 5


@pytest.fixture
def store(feature_repo, monkeypatch):
    """The unit tests' Feast repository, found through the documented environment variable."""
    monkeypatch.setenv(C.FEATURE_REPO_ENV, str(feature_repo))
    return feature_repo


def _artifacts(tmp_path):
    """``<repository>/<model>/<version>/ensemble``, the folder operators load from."""
    path = tmp_path / "repo" / C.MODEL_NAME / "1" / "ensemble"
    path.mkdir(parents=True)
    return path


def _table(kind=TensorTable, **columns):
    return kind({name: np.asarray(values) for name, values in columns.items()})


def test_user_features_flag_unknown_users_and_missing_features(store, tmp_path):
    op = ops.QueryUserFeatures("unused: the environment variable wins", {"age": "int64", "city": "str"})
    op.load_artifacts(str(_artifacts(tmp_path)))
    out = op.transform(None, _table(user_id=np.array([3, 1, 99], dtype=np.int64), k=np.array([5, 5, 5])))
    assert out[ops.FOUND].values.tolist() == [True, True, False]
    assert out[ops.PARTIAL].values.tolist() == [True, False, False]  # user 3 has no city
    assert out["age"].values.tolist() == [40, 20, None] and out["city"].values.tolist() == [None, "a", None]
    assert out[C.INPUT_K].values.tolist() == [5, 5, 5]  # request columns pass through


def test_feature_operators_refuse_a_view_without_their_features(store, tmp_path):
    op = ops.QueryUserFeatures("x", {"age": "int64", "income": "float64"})
    with pytest.raises(ArtifactNotFoundError, match="view user_features lacks income; rebuild it"):
        op.load_artifacts(str(_artifacts(tmp_path)))


def test_a_damaged_registry_is_named_at_load(feature_repo, tmp_path, monkeypatch):
    damaged = tmp_path / "damaged"
    shutil.copytree(feature_repo, damaged)
    (damaged / C.FEAST_REGISTRY).write_bytes(b"\x00 not a registry")
    monkeypatch.setenv(C.FEATURE_REPO_ENV, str(damaged))
    with pytest.raises(ArtifactNotFoundError, match="view user_features cannot be read from the registry"):
        ops.QueryUserFeatures("x", {"age": "int64"}).load_artifacts(str(_artifacts(tmp_path)))


def test_a_failing_online_store_is_one_recsys_error(store, tmp_path):
    op = ops.QueryUserFeatures("x", {"age": "int64"})
    op.load_artifacts(str(_artifacts(tmp_path)))

    class Refusing:
        def read(self, ids):
            raise ConnectionError("Connection refused")

    op._reader = Refusing()
    with pytest.raises(RecsysError, match="feature store lookup in view user_features failed: Connection refused"):
        op.transform(None, _table(user_id=np.array([1], dtype=np.int64)))


def test_the_feature_repository_is_found_beside_the_model_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(C.FEATURE_REPO_ENV, raising=False)
    artifacts = _artifacts(tmp_path)
    assert ops.resolve_feature_repo(str(artifacts), "../feature_repo") == (tmp_path / "feature_repo").resolve()


def test_item_features_of_each_candidate(store, tmp_path):
    op = ops.QueryItemFeatures("x", {"genres": "str", "year": "int64"})
    op.load_artifacts(str(_artifacts(tmp_path)))
    table = _table(item_ids=np.array([[11, 10], [10, 7]]), scores=np.zeros((2, 2), np.float32),
                   fallback=np.zeros((2, 1), bool), partial_features=np.zeros((2, 1), bool))
    out = op.transform(None, table)
    assert out["item_genres"].values.tolist() == [["", "x|y"], ["x|y", ""]]  # unknown item 7: empty
    assert out["item_year"].values.tolist() == [[2001, 1999], [1999, 0]]


def _categories(folder, column, values, codes):
    (folder / CATEGORIES_DIR).mkdir(parents=True, exist_ok=True)
    pd.DataFrame({column: values}, index=codes).to_parquet(folder / CATEGORIES_DIR / unique_file(column))


@pytest.mark.parametrize("kind", [TensorTable, Columns])  # merlin's table, and the runtime's lighter one
def test_encode_user_features_applies_the_fitted_operators_and_passes_the_flags(kind, tmp_path):
    workflow = tmp_path / "workflow"
    _categories(workflow, C.USER_ID, [7, 9, 11], [3, 4, 5])
    _categories(workflow, "city", ["a", "b"], [3, 4])
    _categories(workflow, "tags", ["x", "y"], [3, 4])
    categorify = [{"op": "categorify"}]
    encoders = [
        {"column": C.USER_ID, "kind": "categorical", "steps": categorify},
        {"column": "city", "kind": "categorical", "steps": categorify},
        {"column": "tags", "kind": "list", "steps": categorify},
        {"column": "age", "kind": "continuous",
         "steps": [{"op": "fill", "value": 30.0}, {"op": "normalize", "mean": 20.0, "std": 5.0}]},
    ]
    op = ops.EncodeUserFeatures(str(workflow), encoders)
    artifacts = _artifacts(tmp_path)
    op.save_artifacts(str(artifacts))
    assert sorted(p.name for p in (artifacts / CATEGORIES_DIR).iterdir()) == [
        unique_file(c) for c in ("city", "tags", C.USER_ID)]  # no category file for a continuous column
    op.load_artifacts(str(artifacts))
    tags = np.empty(3, dtype=object)
    tags[:] = [["y", "q"], None, []]
    out = op.transform(None, _table(kind, user_id=np.array([9, 8, 11]), city=np.array(["b", None, "z"], dtype=object),
                                    tags=tags, age=np.array([25.0, None, 10.0], dtype=object),
                                    found=np.array([True, False, True]), partial=np.array([False, False, True])))
    assert type(out) is kind and sorted(out.columns) == sorted([C.USER_ID, "city", "tags", "age", ops.FOUND, ops.PARTIAL])
    assert out[C.USER_ID].values.tolist() == [4, OOV_CODE, 5]
    assert out["city"].values.tolist() == [4, NULL_CODE, OOV_CODE]
    assert out["tags"].values.tolist() == [4, OOV_CODE] and out["tags"].offsets.tolist() == [0, 2, 2, 2]
    np.testing.assert_allclose(out["age"].values, [1.0, 2.0, -2.0])  # a missing age takes the fill value
    assert out["age"].values.dtype == np.float32
    assert out[ops.PARTIAL].values.tolist() == [False, False, True]


def test_predict_query_tower_runs_the_numpy_copy(tmp_path):
    tower = NumpyTower(["city", C.USER_ID], {"city": RNG.normal(size=(6, 2)).astype(np.float32),
                                             C.USER_ID: RNG.normal(size=(6, 2)).astype(np.float32)},
                       [(RNG.normal(size=(4, 4)).astype(np.float32), np.zeros(4, np.float32), "linear")])
    tower.save(tmp_path / "numpy")
    op = ops.PredictQueryTower("unused.savedmodel", ["city", C.USER_ID], "output_1", 4, str(tmp_path / "numpy"))
    artifacts = _artifacts(tmp_path)
    op.save_artifacts(str(artifacts))
    op.load_artifacts(str(artifacts))
    inputs = {"city": np.array([3, 4]), C.USER_ID: np.array([5, 1])}
    out = op.transform(None, _table(**inputs, found=np.array([True, True]), partial=np.array([False, True])))
    np.testing.assert_allclose(out[ops.QUERY_EMBEDDING].values, tower(inputs), rtol=1e-6)
    assert out[ops.PARTIAL].values.tolist() == [False, True]


def test_query_tower_triton_calls_the_tower_model_through_bls(pb_utils):
    op = ops.QueryTowerTriton(ops.PredictQueryTower("s", [C.USER_ID], "output_1", 3), "0_query_tower")
    sent = []

    def answer(request):
        sent.append(request)
        embedding = np.ones((len(request.inputs[0].as_numpy()), 3), np.float32)
        return pb_utils.InferenceResponse([pb_utils.Tensor("output_1", embedding)])

    pb_utils.InferenceRequest.answer = answer
    out = op.transform(None, _table(user_id=np.array([4, 5]), found=np.array([True, True])))
    assert sent[0].model_name == "0_query_tower" and sent[0].inputs[0].as_numpy().shape == (2, 1)
    assert out[ops.QUERY_EMBEDDING].values.shape == (2, 3) and out[ops.FOUND].values.tolist() == [True, True]
    pb_utils.InferenceRequest.answer = pb_utils.InferenceResponse(error=pb_utils.TritonError("tower exploded"))
    with pytest.raises(RecsysError, match="query tower model 0_query_tower: tower exploded"):
        op.transform(None, _table(user_id=np.array([4])))


@pytest.fixture
def index_op(tmp_path):
    index = build_index(ITEMS, ITEM_IDS, ITEMS[:5], "flat", k=4)
    folder = tmp_path / "built_index"
    save_index(index, folder)
    popular = ITEM_IDS[::-1][:20]
    pd.DataFrame({C.ITEM_ID: popular, "score": np.linspace(0.2, 0.01, 20, dtype=np.float32)}).to_parquet(folder / POPULAR_FILE)
    op = ops.QueryIndex(str(folder), top_k=4)
    artifacts = _artifacts(tmp_path)
    op.save_artifacts(str(artifacts))
    op.load_artifacts(str(artifacts))
    return op, popular


def test_query_index_ranks_known_users_and_gives_unknown_ones_the_popular_items(index_op):
    op, popular = index_op
    queries = RNG.normal(size=(3, 4)).astype(np.float32)
    out = op.transform(None, _table(query_embedding=queries, found=np.array([True, False, True]),
                                    partial=np.array([True, False, False])))
    exact = ITEM_IDS[np.argsort(-(queries @ ITEMS.T), axis=1)[:, :4]]
    ids = out[C.OUTPUT_ITEM_IDS].values
    np.testing.assert_array_equal(ids[[0, 2]], exact[[0, 2]])
    np.testing.assert_array_equal(ids[1], popular[:4])
    assert out[C.OUTPUT_FALLBACK].values.reshape(-1).tolist() == [False, True, False]
    assert out[C.OUTPUT_PARTIAL].values.reshape(-1).tolist() == [True, False, False]
    assert op.max_k == 20


def test_query_index_searches_the_largest_k_of_the_request(index_op):
    op, _ = index_op
    out = op.transform(None, _table(query_embedding=ITEMS[:2], found=np.array([True, True]),
                                    partial=np.array([False, False]), k=np.array([7, 7])))
    assert out[C.OUTPUT_ITEM_IDS].values.shape == (2, 7)


def test_empty_ann_slots_are_filled_with_popular_items_not_listed(index_op):
    op, popular = index_op
    ids = np.array([[popular[1], -1, -1]])
    filled, scores = op._fill_empty(ids.copy(), np.array([[0.5, 0.0, 0.0]], np.float32))
    assert filled.tolist() == [[popular[1], popular[0], popular[2]]] and scores.tolist() == [[0.5, 0.5, 0.5]]


def test_every_operator_declares_the_request_columns_it_passes_on(tmp_path):
    from merlin.schema import ColumnSchema, Schema

    request = Schema([ColumnSchema(C.USER_ID, dtype=np.int64), ColumnSchema(C.INPUT_K, dtype=np.int64)])
    user = ops.QueryUserFeatures("x", {"age": "int64"}).compute_output_schema(request, None)
    assert user.column_names == [C.USER_ID, "age", ops.FOUND, ops.PARTIAL, C.INPUT_K]
    steps = [{"op": "categorify"}]
    encoders = [{"column": C.USER_ID, "kind": "categorical", "steps": steps}, {"column": "age", "kind": "continuous", "steps": []}]
    encoded = ops.EncodeUserFeatures("w", encoders).compute_output_schema(user, None)
    assert encoded.column_names == [C.USER_ID, "age", ops.FOUND, ops.PARTIAL, C.INPUT_K]
    tower = ops.PredictQueryTower("s", [C.USER_ID, "age"], "o", 8).compute_output_schema(encoded, None)
    assert tower.column_names == [ops.QUERY_EMBEDDING, ops.FOUND, ops.PARTIAL, C.INPUT_K]
    final = ops.QueryIndex("i", 10).compute_output_schema(tower, None)
    assert final.column_names == [C.OUTPUT_ITEM_IDS, C.OUTPUT_SCORES, C.OUTPUT_FALLBACK, C.OUTPUT_PARTIAL]
