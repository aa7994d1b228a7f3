"""The user's latest items as query features, point in time (YouTube DNN's watch history).

With ``--recent-items N`` every interaction row and every user row gets the columns
``recent_item_1`` (the latest) .. ``recent_item_N``: raw item ids, ``NO_ITEM`` (-1; ``""`` for a
catalog of string ids) where the user has fewer items. Each row sees only what its query would have seen:

- a training row: the N training items before it in the user's time order;
- a validation row (and the user table validation scores with): the N latest training items;
- a test row, the user table of the feature store, serving: the N latest training or
  validation items (validation items are known history at test time, as the protocol's mask).

The model's weights never see a validation or test interaction; only the query's inputs do.
"""

from __future__ import annotations

import dataclasses
import shutil

import pandas as pd

from build_ensemble import constants as C
from build_ensemble.prepared import SPLIT_NAMES, PreparedData
from build_ensemble.errors import DataError

NO_ITEM = -1
NO_ITEM_STRING = ""  # the same for a catalog of string ids
ORDER = [C.USER_ID, C.TIMESTAMP, C.ITEM_ID]  # item id breaks ties between equal timestamps


def recent_columns(n: int) -> list[str]:
    """``recent_item_1`` (latest) .. ``recent_item_n``."""
    return [f"recent_item_{k}" for k in range(1, n + 1)]


def previous_items(interactions: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each row with the ``n`` items its user had before it (by timestamp), rows in time order."""
    df = interactions.sort_values(ORDER, kind="stable").reset_index(drop=True)
    by_user = df.groupby(C.USER_ID)[C.ITEM_ID]
    for k, column in enumerate(recent_columns(n), start=1):
        df[column] = _filled(by_user.shift(k), df[C.ITEM_ID].dtype)
    return df


def _filled(values: pd.Series, dtype) -> pd.Series:
    """Recent items with the no-item marker where the user has fewer, in the ids' type."""
    if not pd.api.types.is_integer_dtype(dtype):
        return values.fillna(NO_ITEM_STRING).astype(object)
    return values.fillna(NO_ITEM).astype("int64")


def latest_items(interactions: pd.DataFrame, users: pd.DataFrame, n: int) -> pd.DataFrame:
    """The user table with each user's ``n`` latest items (``NO_ITEM`` where fewer)."""
    last = interactions.sort_values(ORDER, kind="stable").groupby(C.USER_ID).tail(n)
    rank = last.groupby(C.USER_ID).cumcount(ascending=False).to_numpy()
    wide = last.assign(rank=rank).pivot(index=C.USER_ID, columns="rank", values=C.ITEM_ID)
    wide = wide.reindex(columns=range(n))
    wide.columns = recent_columns(n)
    out = users.drop(columns=recent_columns(n), errors="ignore").merge(wide.reset_index(), on=C.USER_ID, how="left")
    for column in wide.columns:
        out[column] = _filled(out[column], interactions[C.ITEM_ID].dtype)
    return out


def add_recent_items(data: PreparedData, n: int) -> PreparedData:
    """Rewrite the prepared splits and user tables of ``data`` with the recent-item columns.

    Raises:
        DataError: if the interactions carry no timestamp.
    """
    import pyarrow.dataset as ds

    columns = ds.dataset(data.split("train"), format="parquet").schema.names
    if C.TIMESTAMP not in columns:
        raise DataError(
            f"--recent-items needs a {C.TIMESTAMP} column in the interactions to order them; "
            f"{data.split('train')} has {', '.join(columns)}"
        )
    splits = {name: data.read_split(name) for name in SPLIT_NAMES}  # in memory: sized for MovieLens
    users = pd.read_parquet(data.users)
    at_valid = latest_items(splits["train"], users, n)
    at_test = latest_items(pd.concat([splits["train"], splits["valid"]]), users, n)
    rows = {
        "train": previous_items(splits["train"], n),
        "valid": splits["valid"].merge(at_valid[[C.USER_ID, *recent_columns(n)]], on=C.USER_ID, how="left"),
        "test": splits["test"].merge(at_test[[C.USER_ID, *recent_columns(n)]], on=C.USER_ID, how="left"),
    }
    for name, df in rows.items():
        folder = data.split(name)
        shutil.rmtree(folder)
        folder.mkdir()
        df.to_parquet(folder / "part-00000.parquet", index=False)
    at_valid.to_parquet(data.root / C.VALIDATION_USER_FEATURES_FILE, index=False)
    at_test.to_parquet(data.users, index=False)
    spec = dataclasses.replace(
        data.spec, user_features=(*data.spec.user_features, *recent_columns(n)), history_features=tuple(recent_columns(n))
    )
    prepared = PreparedData(data.root, spec, data.counts)
    prepared.save()
    return prepared
