"""Prepared data: the layout every data source writes into a build folder, and the checks on the way.

Every data source ends in the same layout inside the build folder::

    train.parquet/ valid.parquet/ test.parquet/   interactions, raw ids (partitioned)
    user_features.parquet                         one row per user: user_id + user features
    user_features_valid.parquet                   the same when validation was scored (history features only)
    item_features.parquet                         one row per item (the whole catalog)
    data.json                                     which columns are user / item features

Later stages read only these files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from build_ensemble import constants as C
from build_ensemble.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
SPLIT_FILES = {"train": C.TRAIN_FILE, "valid": C.VALID_FILE, "test": C.TEST_FILE}
DATA_SPEC_FILE = "data.json"


@dataclass(frozen=True)
class DataSpec:
    """Which raw columns feed the towers.

    Attributes:
        user_features: user columns besides ``user_id`` (query tower inputs).
        item_features: item columns besides ``item_id`` (item tower inputs).
        list_features: the subset of those holding lists (multi-hot).
        history_features: the user features that change with every interaction (the recent
            items): each interaction row carries its own values, point in time.
        continuous_features: the subset of the features that are numbers (filled, normalized);
            the others are categories.
        options: ``{feature: {option: value}}`` of the dataset spec (``freq_threshold``,
            ``max_size``, ``log``, ``fill``).
        string_ids: the id columns (``user_id``, ``item_id``) whose raw ids are strings.
    """

    user_features: tuple = ()
    item_features: tuple = ()
    list_features: tuple = ()
    history_features: tuple = ()
    continuous_features: tuple = ()
    options: dict = field(default_factory=dict)
    string_ids: tuple = ()

    @classmethod
    def from_dict(cls, values: dict) -> "DataSpec":
        return cls(**{k: v if k == "options" else tuple(v) for k, v in values.items()})

    def option(self, feature: str, name: str, default=None):
        """An option of a feature, or ``default``."""
        return self.options.get(feature, {}).get(name, default)


@dataclass
class PreparedData:
    """Paths of the prepared raw data in a build folder."""

    root: Path
    spec: DataSpec
    counts: dict = field(default_factory=dict)

    def split(self, name: str) -> Path:
        """Folder of one split's parquet parts (``train``, ``valid`` or ``test``)."""
        return self.root / SPLIT_FILES[name]

    @property
    def users(self) -> Path:
        return self.root / C.USER_FEATURES_FILE

    @property
    def items(self) -> Path:
        return self.root / C.ITEM_FEATURES_FILE

    @property
    def validation_users(self) -> Path:
        """The user table as it was when validation was scored (differs from ``users`` with history features)."""
        return self.root / C.VALIDATION_USER_FEATURES_FILE if self.spec.history_features else self.users

    def read_split(self, name: str, columns: list | None = None) -> pd.DataFrame:
        """Read one split into memory."""
        return pd.read_parquet(self.split(name), columns=columns)

    def save(self) -> None:
        (self.root / DATA_SPEC_FILE).write_text(
            json.dumps({"spec": asdict(self.spec), "counts": self.counts}, indent=2)
        )

    @classmethod
    def load(cls, root: str | Path) -> "PreparedData":
        """Open the prepared data of an existing build folder.

        Raises:
            DataError: if the folder holds no prepared data.
        """
        root = Path(root)
        spec_path = root / DATA_SPEC_FILE
        if not spec_path.exists():
            raise DataError(f"{root} holds no prepared data ({DATA_SPEC_FILE} is missing): run a build first")
        values = json.loads(spec_path.read_text())
        return cls(root, DataSpec.from_dict(values["spec"]), values.get("counts", {}))


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Check that ``df`` has every column.

    Raises:
        DataError: naming the source file and the missing columns.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )


def require_ids(df: pd.DataFrame, column: str, source: str, strings: bool = False) -> None:
    """Check that an id column holds non-negative integers (or, with ``strings``, non-empty
    strings) without nulls.

    Raises:
        DataError: naming the source file, the column and the problem.
    """
    values = df[column]
    if strings:
        bad = ~values.map(lambda v: isinstance(v, str) and v != "").to_numpy(dtype=bool)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {column} holds {int(bad.sum())} null, empty or non-string ids "
                            f"(first at row {first}: {values.iloc[first]!r}); every row needs an id")
        return
    if not (ptypes.is_integer_dtype(values.dtype) or ptypes.is_bool_dtype(values.dtype)):
        sample = values.head(3).tolist()
        hint = " (nulls make an integer column float: every row needs an id)" if values.isna().any() else ""
        raise DataError(
            f"{source}: column {column} must hold integer ids, got dtype {values.dtype} "
            f"(first values {sample}){hint}; cast it to int64 before building"
        )
    if len(values) and values.min() < 0:
        raise DataError(f"{source}: column {column} holds negative ids (min {values.min()}); ids must be >= 0")


def require_clicks(df: pd.DataFrame, source: str) -> None:
    """Check that the click column is 0/1.

    Raises:
        DataError: naming the source file when it is not.
    """
    values = df[C.CLICK]
    if not (ptypes.is_integer_dtype(values.dtype) or ptypes.is_bool_dtype(values.dtype)):
        raise DataError(f"{source}: column {C.CLICK} must be 0/1 integers, got dtype {values.dtype}")
    bad = ~values.isin([0, 1])
    if bad.any():
        raise DataError(f"{source}: column {C.CLICK} must be 0 or 1, got {values[bad].iloc[0]!r}")


def check_interactions(df: pd.DataFrame, source: str, string_ids: tuple = ()) -> pd.DataFrame:
    """Validate an interaction chunk and cast its integer ids to int64 (``string_ids``: the id
    columns holding strings)."""
    require_columns(df, [C.USER_ID, C.ITEM_ID, C.CLICK], source)
    for column in (C.USER_ID, C.ITEM_ID):
        require_ids(df, column, source, strings=column in string_ids)
    require_clicks(df, source)
    types = {column: "int64" for column in (C.USER_ID, C.ITEM_ID) if column not in string_ids}
    return df.astype({**types, C.CLICK: "int64"})


class SplitWriter:
    """Writes interaction chunks as parquet parts and collects the user and item tables.

    Memory stays bounded by one chunk plus the (deduplicated) user and item tables.
    """

    def __init__(self, root: Path, spec: DataSpec):
        self.root = root
        self.spec = spec
        self._parts = {name: 0 for name in SPLIT_NAMES}
        self._rows = {name: 0 for name in SPLIT_NAMES}
        self._clicks = {name: 0 for name in SPLIT_NAMES}
        self._users: list[pd.DataFrame] = []
        self._items: list[pd.DataFrame] = []
        for name in SPLIT_NAMES:
            (root / SPLIT_FILES[name]).mkdir(parents=True, exist_ok=True)

    def add_entities(self, users: pd.DataFrame | None, items: pd.DataFrame | None) -> None:
        """Collect user / item feature rows; the first row seen for an id wins."""
        if users is not None:
            self._users.append(users.drop_duplicates(C.USER_ID))
        if items is not None:
            self._items.append(items.drop_duplicates(C.ITEM_ID))

    def write(self, name: str, interactions: pd.DataFrame) -> None:
        """Append one chunk of interactions to split ``name``."""
        if interactions.empty:
            return
        part = self.root / SPLIT_FILES[name] / f"part-{self._parts[name]:05d}.parquet"
        interactions.reset_index(drop=True).to_parquet(part, index=False)
        self._parts[name] += 1
        self._rows[name] += len(interactions)
        self._clicks[name] += int(interactions[C.CLICK].sum())

    def close(self) -> PreparedData:
        """Write the user and item tables and check that nothing is empty.

        Raises:
            DataError: if a split has no clicked interaction, or an interaction refers to
                a user or item without a feature row.
        """
        for name in SPLIT_NAMES:
            if self._clicks[name] == 0:
                raise DataError(
                    f"the {name} split is empty after filtering {C.CLICK} == 1 "
                    f"({self._rows[name]} rows, none clicked): the model has nothing to learn or be scored on"
                )
        users = pd.concat(self._users).drop_duplicates(C.USER_ID).sort_values(C.USER_ID)
        items = pd.concat(self._items).drop_duplicates(C.ITEM_ID).sort_values(C.ITEM_ID)
        for name in SPLIT_NAMES:
            ids = pd.read_parquet(self.root / SPLIT_FILES[name], columns=[C.USER_ID, C.ITEM_ID])
            for column, table, table_name in ((C.USER_ID, users, "user"), (C.ITEM_ID, items, "item")):
                unknown = ~ids[column].isin(table[column])
                if unknown.any():
                    raise DataError(
                        f"{name} interactions: {column} {ids[column][unknown].iloc[0]} has no row in the "
                        f"{table_name} features ({int(unknown.sum())} rows affected)"
                    )
        users.reset_index(drop=True).to_parquet(self.root / C.USER_FEATURES_FILE, index=False)
        items.reset_index(drop=True).to_parquet(self.root / C.ITEM_FEATURES_FILE, index=False)
        counts = {
            **{f"{n}_rows": self._rows[n] for n in SPLIT_NAMES},
            **{f"{n}_clicks": self._clicks[n] for n in SPLIT_NAMES},
            "users": len(users),
            "items": len(items),
        }
        prepared = PreparedData(self.root, self.spec, counts)
        prepared.save()
        logger.info("prepared data: %s", counts)
        return prepared


def split_per_user(
    interactions: pd.DataFrame, how: str, seed: int, ratios: tuple = (0.8, 0.1, 0.1)
) -> dict[str, pd.DataFrame]:
    """Split each user's interactions into train/valid/test.

    Per user with n interactions, ``int(n * ratio)`` go to valid and to test and the rest to
    train (RecBole's rule). ``random`` shuffles each user's rows with ``seed``; ``temporal``
    puts the latest rows in test and the ones before them in valid.

    Args:
        interactions: rows with ``user_id``, ``item_id`` (and ``timestamp`` for temporal).
        how: ``random`` or ``temporal``.
        seed: seed of the shuffle.
        ratios: train, valid, test shares.

    Returns:
        ``{"train": df, "valid": df, "test": df}``.
    """
    df = interactions.reset_index(drop=True)
    if how == "random":
        order = np.random.default_rng(seed).permutation(len(df))
        df = df.iloc[order]
        df = df.sort_values(C.USER_ID, kind="stable")
    elif how == "temporal":
        require_columns(df, [C.TIMESTAMP], "interactions")
        df = df.sort_values([C.USER_ID, C.TIMESTAMP, C.ITEM_ID], kind="stable")
    else:
        raise ValueError(f"how must be 'random' or 'temporal', got {how!r}")
    position = df.groupby(C.USER_ID).cumcount().to_numpy()
    size = df.groupby(C.USER_ID)[C.USER_ID].transform("size").to_numpy()
    n_valid = (size * ratios[1]).astype(int)
    n_test = (size * ratios[2]).astype(int)
    n_train = size - n_valid - n_test
    which = np.where(position < n_train, 0, np.where(position < n_train + n_valid, 1, 2))
    return {name: df[which == i].reset_index(drop=True) for i, name in enumerate(SPLIT_NAMES)}


def read_parts(folder: Path, columns: list | None = None) -> pd.DataFrame:
    """Read every ``*.parquet`` part of a folder (ignoring NVTabular's schema files)."""
    parts = sorted(Path(folder).glob("*.parquet"))
    if not parts:
        raise DataError(f"{folder} holds no parquet parts")
    return pd.concat([pd.read_parquet(p, columns=columns) for p in parts], ignore_index=True)


def fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of the given files and folders (sorted), for the manifest."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()
