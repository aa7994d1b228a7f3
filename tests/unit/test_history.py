import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.errors import DataError
from build_ensemble.history import NO_ITEM, add_recent_items, latest_items, previous_items, recent_columns
from build_ensemble.prepared import DataSpec, PreparedData, SplitWriter


def rows(user, items, start=0):
    """One user's interactions with the given items, one second apart from ``start``."""
    return pd.DataFrame(
        {C.USER_ID: user, C.ITEM_ID: items, C.CLICK: 1, C.TIMESTAMP: range(start, start + len(items))}
    )


def test_each_row_sees_the_items_before_it_latest_first():
    # Rows arrive shuffled; time order decides, and user 2's items never leak into user 1's.
    df = pd.concat([rows(1, [10, 11, 12]), rows(2, [20, 21])]).sample(frac=1, random_state=0)
    out = previous_items(df, 2).set_index([C.USER_ID, C.ITEM_ID])
    assert out.loc[(1, 10), recent_columns(2)].tolist() == [NO_ITEM, NO_ITEM]
    assert out.loc[(1, 11), recent_columns(2)].tolist() == [10, NO_ITEM]
    assert out.loc[(1, 12), recent_columns(2)].tolist() == [11, 10]
    assert out.loc[(2, 21), recent_columns(2)].tolist() == [20, NO_ITEM]


def test_equal_timestamps_are_ordered_by_item_id():
    df = pd.DataFrame({C.USER_ID: 1, C.ITEM_ID: [12, 11], C.CLICK: 1, C.TIMESTAMP: 5})
    assert previous_items(df, 1)[recent_columns(1)[0]].tolist() == [NO_ITEM, 11]


def test_latest_items_keep_the_user_table_and_pad_short_histories():
    users = pd.DataFrame({C.USER_ID: [3, 1, 2], "age": [30, 10, 20]})
    out = latest_items(pd.concat([rows(1, [10, 11, 12]), rows(2, [20])]), users, 2)
    assert out[C.USER_ID].tolist() == [3, 1, 2] and out["age"].tolist() == [30, 10, 20]
    assert out[recent_columns(2)].values.tolist() == [[NO_ITEM, NO_ITEM], [12, 11], [20, NO_ITEM]]
    assert (out[recent_columns(2)].dtypes == "int64").all()


def prepared(tmp_path, with_timestamp=True):
    writer = SplitWriter(tmp_path, DataSpec(user_features=("age",)))
    users = pd.DataFrame({C.USER_ID: [1, 2], "age": [10, 20]})
    items = pd.DataFrame({C.ITEM_ID: range(10, 40)})
    writer.add_entities(users, items)
    parts = {
        "train": pd.concat([rows(1, [10, 11, 12]), rows(2, [20, 21])]),
        "valid": pd.concat([rows(1, [13], 100), rows(2, [22], 100)]),
        "test": pd.concat([rows(1, [14], 200), rows(2, [23], 200)]),
    }
    for name, part in parts.items():
        writer.write(name, part if with_timestamp else part.drop(columns=[C.TIMESTAMP]))
    return writer.close()


def by_user(df):
    return dict(zip(df[C.USER_ID], df[recent_columns(2)].values.tolist()))


def test_splits_and_user_tables_see_only_what_their_query_knew(tmp_path):
    data = add_recent_items(prepared(tmp_path), 2)
    assert data.spec.history_features == tuple(recent_columns(2))
    assert data.spec.user_features == ("age", *recent_columns(2))
    # Validation: the latest training items; test and the served user table: validation included.
    assert by_user(data.read_split("valid")) == {1: [12, 11], 2: [21, 20]}
    assert by_user(pd.read_parquet(data.validation_users)) == {1: [12, 11], 2: [21, 20]}
    assert by_user(data.read_split("test")) == {1: [13, 12], 2: [22, 21]}
    assert by_user(pd.read_parquet(data.users)) == {1: [13, 12], 2: [22, 21]}
    assert pd.read_parquet(data.users)["age"].tolist() == [10, 20]
    train = data.read_split("train")
    assert train[train[C.ITEM_ID] == 12][recent_columns(2)].values.tolist() == [[11, 10]]
    assert len(train) == 5
    # The spec is saved with the data, so later stages (and `evaluate`) see the history features.
    assert PreparedData.load(tmp_path).spec == data.spec


def test_history_without_timestamps_names_the_column(tmp_path):
    with pytest.raises(DataError, match="--recent-items needs a timestamp column"):
        add_recent_items(prepared(tmp_path, with_timestamp=False), 2)
