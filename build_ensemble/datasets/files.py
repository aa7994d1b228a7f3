"""The user's own files, read as a dataset spec declares them (``--dataset-spec``; ``datasets.spec``).

Interaction files (parquet or csv by extension, a glob) are read in chunks; each is checked
(ids, label, timestamp, feature kinds) with the file and column named in every error. The
label rule gives the ``click`` column the workflow's ``Filter`` keeps. Without a ``validation``
glob each user's interactions are split by ``--split`` (random or temporal, in memory); with
one, the interaction files are the training split and the validation files are split
half/half into valid and test (streamed). User and item features come from the ``users`` /
``items`` tables when given (every column of them is kept; the declared ones are features),
else from the first interaction row of each user / item.

In csv files a list feature is written ``a|b|c`` (an empty cell is an empty list).
"""

from __future__ import annotations

import glob as globlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from build_ensemble import constants as C
from build_ensemble.config import BuildConfig
from build_ensemble.datasets.spec import DatasetSpec, load_spec
from build_ensemble.errors import ConfigError, DataError
from build_ensemble.prepared import (
    DataSpec,
    PreparedData,
    SplitWriter,
    require_columns,
    require_ids,
    split_per_user,
)
from build_ensemble.progress import Reporter

CHUNK_ROWS = 1_000_000
PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz", ".tsv")
LIST_SEPARATOR = "|"
INTEGER = r"0|[1-9][0-9]{0,17}"  # a csv id read as int64 (other texts stay strings)


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): the files of ``config.dataset_spec``."""
    return prepare_spec(load_spec(config.dataset_spec), config, root, reporter)


def prepare_spec(spec: DatasetSpec, config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """Write the prepared layout of the data a spec declares into ``root``.

    Args:
        spec: the checked spec.
        config: ``split`` and ``seed`` are used (without a ``validation`` glob).
        root: build folder.
        reporter: progress of the chunk loops.

    Raises:
        DataError: naming the file, the column and the problem.
        ConfigError: for a temporal split without a timestamp.
    """
    files = match(spec.interactions, spec, "interactions")
    if not spec.validation and config.split == "temporal" and not spec.timestamp:
        raise ConfigError(f"dataset spec {spec.source}: --split temporal needs a timestamp column (the key timestamp)")
    reader = Reader(spec)
    data_spec = reader.data_spec(files[0])
    writer = SplitWriter(root, data_spec)
    users, items = reader.table(spec.users, C.USER_ID), reader.table(spec.items, C.ITEM_ID)
    writer.add_entities(users, items)
    chunks = reporter.iterate(reader.interactions(files), "read interactions")
    if spec.validation:
        rng = np.random.default_rng(config.seed)
        for df in chunks:
            reader.collect(writer, df, users is None, items is None)
            writer.write("train", df[reader.kept(df)])
        for df in reporter.iterate(reader.interactions(match(spec.validation, spec, "validation")), "read validation"):
            reader.collect(writer, df, users is None, items is None)
            assign = rng.choice([1, 2], size=len(df))
            writer.write("valid", df.loc[assign == 1, reader.kept(df)])
            writer.write("test", df.loc[assign == 2, reader.kept(df)])
    else:
        parts = []
        for df in chunks:
            reader.collect(writer, df, users is None, items is None)
            parts.append(df[reader.kept(df)])
        for name, part in split_per_user(pd.concat(parts, ignore_index=True), config.split, config.seed).items():
            writer.write(name, part)
    reader.check_positives()
    return writer.close()


def to_data_spec(spec: DatasetSpec, string_ids: tuple = ()) -> DataSpec:
    """The prepared data's description of a dataset spec's features (``string_ids``: the id
    columns whose raw ids are strings)."""
    features = spec.features
    options = {}
    for f in features:
        values = {"freq_threshold": f.freq_threshold, "max_size": f.max_size, "log": f.log}
        values = {k: v for k, v in values.items() if v}  # 0 and False are the defaults
        if f.fill is not None:  # fill: 0 is a value
            values["fill"] = f.fill
        if values:
            options[f.name] = values
    return DataSpec(
        user_features=tuple(f.name for f in spec.user_features),
        item_features=tuple(f.name for f in spec.item_features),
        list_features=tuple(f.name for f in features if f.kind == "list"),
        continuous_features=tuple(f.name for f in features if f.kind == "continuous"),
        options=options,
        string_ids=tuple(string_ids),
    )


def match(pattern: str, spec: DatasetSpec, key: str) -> list:
    """Files of a glob, sorted.

    Raises:
        DataError: if nothing matches, or a file is neither parquet nor csv.
    """
    files = sorted(globlib.glob(pattern))
    if not files:
        raise DataError(f"dataset spec {spec.source}: {key}: no file matches {pattern!r}")
    for file in files:
        if not file.endswith(PARQUET + CSV):
            raise DataError(f"{file}: not parquet or csv (by its extension: {', '.join(PARQUET + CSV)})")
    return files


def read_chunks(file: str, chunk_rows: int = CHUNK_ROWS, text: tuple = ()) -> Iterator[pd.DataFrame]:
    """The rows of one parquet or csv file, chunk by chunk. In csv files only an empty cell is
    null (``NA`` stays a value) and the ``text`` columns are read as strings.

    Raises:
        DataError: if the file cannot be read (with the parser's reason, e.g. a ragged csv row).
    """
    try:
        if file.endswith(PARQUET):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(file).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            sep = "\t" if file.endswith(".tsv") else ","
            header = pd.read_csv(file, sep=sep, nrows=0).columns
            dtypes = {column: str for column in text if column in header}
            yield from pd.read_csv(file, sep=sep, chunksize=chunk_rows, keep_default_na=False, na_values=[""],
                                   dtype=dtypes)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{file}: cannot be read as {'parquet' if file.endswith(PARQUET) else 'csv'} ({reason})") from None


class Reader:
    """Reads and checks the files of one spec, and keeps what it learns on the way (id types,
    positive rows)."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.string_ids: tuple = ()
        self.rows = 0
        self.positives = 0
        self.labels: list = []
        self.user_names = [f.name for f in spec.user_features]
        self.item_names = [f.name for f in spec.item_features]

    def data_spec(self, first_file: str) -> DataSpec:
        """The prepared data's spec, with the id types of the first interaction chunk."""
        first = next(self._chunks(first_file, 1000), pd.DataFrame())
        require_columns(first, [self.spec.user_id, self.spec.item_id], first_file)
        self.string_ids = tuple(
            internal for internal, column in ((C.USER_ID, self.spec.user_id), (C.ITEM_ID, self.spec.item_id))
            if not ptypes.is_numeric_dtype(first[column].dtype) and not ptypes.is_bool_dtype(first[column].dtype)
        )
        return to_data_spec(self.spec, self.string_ids)

    def interactions(self, files: list) -> Iterator[pd.DataFrame]:
        """Checked interaction chunks: ``user_id``, ``item_id``, ``click`` (and ``timestamp``),
        the declared features the chunk holds, raw ids."""
        spec = self.spec
        for file in files:
            for raw in self._chunks(file):
                required = [spec.user_id, spec.item_id] + [c for c in (spec.timestamp, spec.label) if c]
                if spec.users is None:
                    required += self.user_names
                if spec.items is None:
                    required += self.item_names
                require_columns(raw, required, file)
                for internal, column in ((C.USER_ID, spec.user_id), (C.ITEM_ID, spec.item_id)):
                    require_ids(raw, column, file, strings=internal in self.string_ids)
                df = _renamed(raw, {spec.user_id: C.USER_ID, spec.item_id: C.ITEM_ID})
                df = df.astype({c: object if c in self.string_ids else "int64" for c in (C.USER_ID, C.ITEM_ID)})
                df[C.CLICK] = self._clicks(df, file)
                if spec.timestamp:
                    df[C.TIMESTAMP] = seconds(df[spec.timestamp], file, spec.timestamp)
                yield check_features(df, self.spec.features, file)

    def kept(self, df: pd.DataFrame) -> list:
        """The interaction columns that go into the splits: ids, ``click``, the timestamp and the label."""
        extra = [c for c in (C.TIMESTAMP if self.spec.timestamp else None, self.spec.label) if c and c != C.CLICK]
        return [C.USER_ID, C.ITEM_ID, C.CLICK, *extra]

    def collect(self, writer: SplitWriter, df: pd.DataFrame, users: bool, items: bool) -> None:
        """Take user / item feature rows from interactions when no table gives them."""
        writer.add_entities(df[[C.USER_ID, *self.user_names]] if users else None,
                            df[[C.ITEM_ID, *self.item_names]] if items else None)

    def table(self, path: str | None, id_column: str) -> pd.DataFrame | None:
        """A checked user or item table (one row per id), or None without one."""
        if path is None:
            return None
        raw_id = self.spec.user_id if id_column == C.USER_ID else self.spec.item_id
        names = self.user_names if id_column == C.USER_ID else self.item_names
        files = match(path, self.spec, "users" if id_column == C.USER_ID else "items")
        parts = []
        for file in files:
            for df in self._chunks(file):
                require_columns(df, [raw_id, *names], file)
                strings = id_column in self.string_ids
                require_ids(df, raw_id, file, strings=strings)
                df = _renamed(df, {raw_id: id_column})
                df[id_column] = df[id_column].astype(object if strings else "int64")
                parts.append(check_features(df, [f for f in self.spec.features if f.name in names], file))
        table = pd.concat(parts, ignore_index=True)
        duplicated = table[id_column].duplicated()
        if duplicated.any():
            raise DataError(f"{path}: {raw_id} {table[id_column][duplicated].iloc[0]!r} has "
                            f"{int(duplicated.sum()) + 1} rows; the table needs one row per id")
        return table

    def _chunks(self, file: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """A file's chunks; in csv files the ids and lists are read as text, and ids that are all
        plain integers (no sign, no leading zero) become int64."""
        spec = self.spec
        ids = (spec.user_id, spec.item_id)
        lists = tuple(f.name for f in spec.features if f.kind == "list")
        for df in read_chunks(file, chunk_rows, text=ids + lists):
            if file.endswith(CSV):
                for column in ids:
                    if column in df.columns and df[column].dtype == object and df[column].str.fullmatch(INTEGER).all():
                        df[column] = df[column].astype("int64")
            yield df

    def _clicks(self, df: pd.DataFrame, file: str) -> pd.Series:
        spec = self.spec
        self.rows += len(df)
        if not spec.label:
            self.positives += len(df)
            return pd.Series(1, index=df.index, dtype="int64")
        label = df[spec.label]
        if not ptypes.is_numeric_dtype(label.dtype):
            raise DataError(f"{file}: label column {spec.label} must be numeric, got dtype {label.dtype} "
                            f"(first values {label.head(3).tolist()})")
        if len(label):
            self.labels.extend([float(label.min()), float(label.max())])
        clicks = (label >= spec.label_threshold).astype("int64")
        self.positives += int(clicks.sum())
        return clicks

    def check_positives(self) -> None:
        """Raises DataError when no interaction is positive after the label threshold."""
        if self.positives == 0:
            spec = self.spec
            seen = f", {spec.label} from {min(self.labels):g} to {max(self.labels):g}" if self.labels else ""
            raise DataError(f"dataset spec {spec.source}: no interaction has {spec.label} >= {spec.label_threshold:g} "
                            f"({self.rows} rows{seen}): there is nothing to learn from; lower label_threshold")


def _renamed(df: pd.DataFrame, names: dict) -> pd.DataFrame:
    """``df`` with its id columns under the internal names; other columns already holding
    those names are dropped (they would be ambiguous)."""
    clashing = [new for old, new in names.items() if new in df.columns and new != old]
    return df.drop(columns=clashing).rename(columns=names)


def seconds(values: pd.Series, file: str, column: str) -> pd.Series:
    """Integer seconds of a timestamp column (integer or float seconds, or datetimes).

    Raises:
        DataError: for nulls or another type.
    """
    if values.isna().any():
        raise DataError(f"{file}: timestamp column {column} has {int(values.isna().sum())} empty values")
    if ptypes.is_datetime64_any_dtype(values.dtype):
        stamps = values.dt.tz_convert("UTC") if values.dt.tz is not None else values
        return (stamps.astype("int64") // 10**9).astype("int64")
    if ptypes.is_numeric_dtype(values.dtype) and not ptypes.is_bool_dtype(values.dtype):
        return values.astype("int64")
    if values.dtype == object:
        try:
            return seconds(pd.to_datetime(values, utc=True), file, column)
        except (ValueError, TypeError):
            pass
    raise DataError(f"{file}: timestamp column {column} must hold integer seconds or datetimes, got dtype "
                    f"{values.dtype} (first values {values.head(3).tolist()})")


def check_features(df: pd.DataFrame, features, file: str) -> pd.DataFrame:
    """Check (and, for csv lists, parse) the declared features a table holds.

    Raises:
        DataError: naming the file, the column and what is wrong.
    """
    for feature in features:
        if feature.name not in df.columns:
            continue
        values = df[feature.name]
        if feature.kind == "continuous":
            df[feature.name] = _numbers(values, file, feature)
        elif feature.kind == "list":
            df[feature.name] = _lists(values, file, feature.name)
        else:
            listed = values.map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
            if listed.any():
                raise DataError(f"{file}: categorical feature {feature.name} holds lists (row {int(np.flatnonzero(listed)[0])}); "
                                f"declare it list")
            if values.dtype == object:
                df[feature.name] = values.map(lambda v: v if v is None or isinstance(v, str) or v != v else str(v))
    return df


def _numbers(values: pd.Series, file: str, feature) -> pd.Series:
    """A continuous feature as float64 (numbers written as text are read as numbers).

    Raises:
        DataError: for values that are not numbers, or below -1 with ``log``.
    """
    numbers = pd.to_numeric(values, errors="coerce") if not ptypes.is_bool_dtype(values.dtype) else None
    if numbers is None or not ptypes.is_numeric_dtype(numbers.dtype):
        bad = values.dropna()
        raise DataError(f"{file}: continuous feature {feature.name} holds non-numbers (dtype {values.dtype}, "
                        f"e.g. {bad.iloc[0]!r} at row {bad.index[0]}); declare it categorical or clean it")
    bad = values[numbers.isna() & values.notna()]
    if len(bad):
        raise DataError(f"{file}: continuous feature {feature.name} holds non-numbers (dtype {values.dtype}, "
                        f"e.g. {bad.iloc[0]!r} at row {bad.index[0]}); declare it categorical or clean it")
    numbers = numbers.astype("float64")
    if feature.log and (numbers <= -1).any():
        row = numbers.index[int(np.flatnonzero((numbers <= -1).to_numpy())[0])]
        raise DataError(f"{file}: continuous feature {feature.name} has log: true but holds {numbers[row]:g} at row {row}; "
                        f"log(1 + x) needs x > -1")
    return numbers


def _lists(values: pd.Series, file: str, name: str) -> pd.Series:
    def parse(value):
        if isinstance(value, (list, tuple, np.ndarray)):
            return [v for v in value if v is not None]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return []
        if isinstance(value, str) and file.endswith(CSV):
            return [v for v in value.split(LIST_SEPARATOR) if v != ""]
        raise TypeError(value)

    try:
        return values.map(parse)
    except TypeError as exc:
        row = int(np.flatnonzero(values.map(lambda v: not isinstance(v, (list, tuple, np.ndarray)) and v is not None
                                            and not (isinstance(v, float) and np.isnan(v))).to_numpy())[0])
        raise DataError(f"{file}: list feature {name} holds a {type(exc.args[0]).__name__} at row {row} "
                        f"({exc.args[0]!r}), not a list; write lists (in csv: a|b|c) or declare it categorical") from None
