import numpy as np
import pandas as pd
import pytest

from build_ensemble import train as T
from build_ensemble.config import make_config
from build_ensemble.tower import NumpyTower, UnsupportedTower, compile_tower, extract


def _schema(list_feature=False, continuous=False):
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name, tags, cardinality, is_list=False):
        dims = (None, None) if is_list else None
        return ColumnSchema(name, dtype=np.int64, tags=[*tags, Tags.CATEGORICAL], dims=dims,
                            properties={"domain": {"min": 0, "max": cardinality - 1, "name": name}})

    columns = [column("user_id", [Tags.USER_ID, Tags.USER], 50), column("age", [Tags.USER], 9),
               column("zone", [Tags.USER], 5), column("item_id", [Tags.ITEM_ID, Tags.ITEM], 30)]
    if list_feature:
        columns.append(column("tags", [Tags.USER], 7, is_list=True))
    if continuous:
        columns.append(ColumnSchema("income", dtype=np.float32, tags=[Tags.USER, Tags.CONTINUOUS]))
    return Schema(columns)


def _loader(users, schema):
    import merlin.models.tf as mm
    from merlin.io import Dataset

    return mm.Loader(Dataset(users, schema=schema, cpu=True), batch_size=64, shuffle=False)


def _users():
    return pd.DataFrame({"user_id": np.arange(3, 40), "age": np.arange(37) % 9, "zone": np.arange(37) % 5,
                         "item_id": np.arange(37) % 27 + 3})


@pytest.mark.parametrize("options", [{}, {"dropout": 0.3, "normalize": True, "query_tower": [32, 16, 8]}])
def test_numpy_tower_gives_tensorflows_numbers(options, tmp_path):
    schema = _schema()
    model = T.build_model(schema, make_config(overrides=options), None)
    users = _users()
    features, _ = next(iter(_loader(users, schema)))
    reference = model.query_encoder(features).numpy()
    inputs = {c: users[c].to_numpy() for c in ("user_id", "age", "zone")}
    tower = extract(model.query_encoder)
    assert tower.features == ["age", "user_id", "zone"]
    np.testing.assert_allclose(tower(inputs), reference, atol=1e-6)
    result = compile_tower(model.query_encoder, inputs, reference, tmp_path / "tower")
    assert result["runtime"] == "numpy" and result["max_abs_diff"] < 1e-6
    np.testing.assert_allclose(NumpyTower.load(tmp_path / "tower")(inputs), reference, atol=1e-6)


def test_a_disagreeing_tower_is_not_used(tmp_path):
    model = T.build_model(_schema(), make_config(), None)
    model.query_encoder(next(iter(_loader(_users(), _schema())))[0])
    inputs = {c: _users()[c].to_numpy() for c in ("user_id", "age", "zone")}
    wrong = np.zeros((37, 64), dtype=np.float32) + 5
    result = compile_tower(model.query_encoder, inputs, wrong, tmp_path / "tower")
    assert result["runtime"] == "tensorflow" and "max abs difference" in result["reason"]
    assert not (tmp_path / "tower").exists()


def test_list_and_continuous_inputs_give_tensorflows_numbers(tmp_path):
    """Lists are mean-combined (an empty one gives zeros), continuous inputs enter as they are."""
    from build_ensemble.tower import numpy_inputs

    schema = _schema(list_feature=True, continuous=True)
    model = T.build_model(schema, make_config(overrides={"query_tower": [16, 8]}), None)
    tags = [[1, 2], [], [6], [3, 3, 5]] * 9 + [[4]]
    users = _users().assign(tags=tags, income=np.linspace(-1.5, 2.0, 37).astype(np.float32))
    features, _ = next(iter(_loader(users, schema)))
    reference = model.query_encoder(features).numpy()
    inputs = numpy_inputs(users[["user_id", "age", "zone", "tags", "income"]], list_features=("tags",))
    assert inputs["tags__offsets"][:5].tolist() == [0, 2, 2, 3, 6]
    result = compile_tower(model.query_encoder, inputs, reference, tmp_path / "tower", continuous=("income",))
    assert result["runtime"] == "numpy" and result["max_abs_diff"] < 1e-5, result
    tower = NumpyTower.load(tmp_path / "tower")
    assert tower.features == ["age", "income", "tags", "user_id", "zone"]
    assert tower.kinds == {"income": "continuous", "tags": "list"}
    np.testing.assert_allclose(tower(inputs), reference, atol=1e-5)


def test_a_combiner_other_than_mean_is_left_to_tensorflow():
    model = T.build_model(_schema(list_feature=True), make_config(), None)
    model.query_encoder(next(iter(_loader(_users().assign(tags=[[1, 2]] * 37), _schema(True))))[0])
    table = next(layer for layer in _walk_tables(model.query_encoder) if layer.col_schema.name == "tags")
    table.sequence_combiner = "sum"
    with pytest.raises(UnsupportedTower, match="list feature tags: combiner 'sum' is not reproduced"):
        extract(model.query_encoder)


def _walk_tables(encoder):
    from build_ensemble.tower import _walk

    return [layer for layer in _walk(encoder) if type(layer).__name__ == "EmbeddingTable"]


def test_id_embedding_dim_sizes_only_the_id_tables():
    """--id-embedding-dim applies to user_id / item_id; the other features keep their inferred sizes."""
    schema = _schema()
    model = T.build_model(schema, make_config(overrides={"id_embedding_dim": 24}), None)
    model.query_encoder(next(iter(_loader(_users(), schema)))[0])
    tower = extract(model.query_encoder)
    assert T.id_columns(schema).column_names == ["user_id", "item_id"]
    assert tower.tables["user_id"].shape == (50, 24)
    assert tower.tables["age"].shape[1] != 24 and tower.tables["zone"].shape[1] != 24
