import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.errors import DataError
from build_ensemble.prepared import DataSpec, PreparedData, SplitWriter, check_interactions, read_parts, split_per_user


def interactions(n=30, users=3, items=5, clicks=1):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            C.USER_ID: rng.integers(0, users, n),
            C.ITEM_ID: rng.integers(0, items, n),
            C.CLICK: np.full(n, clicks),
            C.TIMESTAMP: np.arange(n),
        }
    )


def test_missing_column_names_file_and_column():
    df = interactions().drop(columns=[C.ITEM_ID])
    with pytest.raises(DataError, match=r"part-7\.parquet: missing column\(s\) item_id"):
        check_interactions(df, "part-7.parquet")


def test_non_integer_ids_are_refused_with_the_column():
    df = interactions()
    df[C.USER_ID] = df[C.USER_ID].astype(str)
    with pytest.raises(DataError, match="in.parquet: column user_id must hold integer ids, got dtype object"):
        check_interactions(df, "in.parquet")
    df = interactions()
    df[C.ITEM_ID] = df[C.ITEM_ID] + 0.5
    with pytest.raises(DataError, match="column item_id must hold integer ids, got dtype float64"):
        check_interactions(df, "in.parquet")


def test_negative_ids_and_bad_clicks_are_refused():
    df = interactions()
    df.loc[3, C.USER_ID] = -4
    with pytest.raises(DataError, match="negative ids"):
        check_interactions(df, "x")
    df = interactions()
    df.loc[0, C.CLICK] = 2
    with pytest.raises(DataError, match="click must be 0 or 1, got 2"):
        check_interactions(df, "x")


def test_ids_are_cast_to_int64():
    df = interactions().astype({C.USER_ID: "int32", C.ITEM_ID: "int16"})
    out = check_interactions(df, "x")
    assert out[C.USER_ID].dtype == np.int64 and out[C.ITEM_ID].dtype == np.int64


def _writer(tmp_path, df):
    users = pd.DataFrame({C.USER_ID: np.arange(3), "age": [1, 2, 3]})
    items = pd.DataFrame({C.ITEM_ID: np.arange(5), "cat": list("abcde")})
    writer = SplitWriter(tmp_path, DataSpec(("age",), ("cat",)))
    writer.add_entities(users, items)
    for name in ("train", "valid", "test"):
        writer.write(name, df)
    return writer


def test_split_writer_round_trip(tmp_path):
    df = interactions()
    prepared = _writer(tmp_path, df).close()
    assert prepared.counts["train_rows"] == len(df) and prepared.counts["users"] == 3
    again = PreparedData.load(tmp_path)
    assert again.spec == DataSpec(("age",), ("cat",))
    pd.testing.assert_frame_equal(again.read_split("test"), df)
    assert list(pd.read_parquet(again.items)[C.ITEM_ID]) == [0, 1, 2, 3, 4]


def test_empty_after_click_filter_is_an_error(tmp_path):
    with pytest.raises(DataError, match="train split is empty after filtering click == 1"):
        _writer(tmp_path, interactions(clicks=0)).close()


def test_interaction_without_feature_row_is_an_error(tmp_path):
    df = interactions()
    df.loc[0, C.ITEM_ID] = 99
    with pytest.raises(DataError, match="item_id 99 has no row in the item features"):
        _writer(tmp_path, df).close()


def test_load_without_prepared_data(tmp_path):
    with pytest.raises(DataError, match="holds no prepared data"):
        PreparedData.load(tmp_path)
    with pytest.raises(DataError, match="holds no parquet parts"):
        read_parts(tmp_path)


def test_random_split_is_per_user_80_10_10_and_seeded():
    df = pd.DataFrame({C.USER_ID: np.repeat([1, 2], [20, 31]), C.ITEM_ID: np.arange(51)})
    parts = split_per_user(df, "random", seed=3)
    sizes = {name: part.groupby(C.USER_ID).size().to_dict() for name, part in parts.items()}
    assert sizes["valid"] == {1: 2, 2: 3} and sizes["test"] == {1: 2, 2: 3}
    assert sizes["train"] == {1: 16, 2: 25}
    again = split_per_user(df, "random", seed=3)
    pd.testing.assert_frame_equal(parts["test"], again["test"])
    other = split_per_user(df, "random", seed=4)
    assert set(other["test"][C.ITEM_ID]) != set(parts["test"][C.ITEM_ID])
    assert sorted(pd.concat(parts.values())[C.ITEM_ID]) == list(range(51))


def test_temporal_split_puts_the_latest_in_test():
    df = pd.DataFrame({C.USER_ID: [1] * 10, C.ITEM_ID: np.arange(10), C.TIMESTAMP: np.arange(10)[::-1]})
    parts = split_per_user(df, "temporal", seed=0)
    assert list(parts["test"][C.ITEM_ID]) == [0]  # timestamp 9, the latest
    assert list(parts["valid"][C.ITEM_ID]) == [1]
    assert set(parts["train"][C.ITEM_ID]) == set(range(2, 10))
