"""Your own files through a dataset spec: what is read, and one clear error per kind of bad spec or data."""

import shutil

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.datasets import files
from build_ensemble.datasets.spec import load_spec
from build_ensemble.errors import ConfigError, DataError
from build_ensemble.prepared import PreparedData
from build_ensemble.progress import Reporter
from examples.own_data import write_own_data


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return write_own_data(tmp_path_factory.mktemp("own") / "data", users=40, items=30, events=600)


def _prepare(spec_path, tmp_path, **options):
    config = make_config(overrides={"dataset_spec": str(spec_path), **options})
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return files.prepare(config, out, Reporter())


def _copy(own, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(own.parent, copy)
    return copy


def _spec(copy, text=None, **replace):
    spec = copy / "dataset.yaml"
    body = text if text is not None else spec.read_text()
    for old, new in replace.items():
        body = body.replace(old, new)
    spec.write_text(body)
    return spec


def test_the_spec_form_of_the_issue_is_read_with_paths_from_its_folder(own):
    spec = load_spec(own)
    assert spec.interactions == str(own.parent / "events/*.parquet") and spec.items == str(own.parent / "items.csv")
    assert [(f.name, f.kind) for f in spec.user_features] == [("country", "categorical"), ("age", "continuous"),
                                                              ("interests", "list")]
    assert spec.item_features[1].log is True and spec.label_threshold == 4


def test_own_files_become_the_prepared_layout(own, tmp_path):
    data = _prepare(own, tmp_path)
    assert data.spec.string_ids == (C.USER_ID, C.ITEM_ID)
    assert data.spec.continuous_features == ("age", "price") and data.spec.list_features == ("interests", "tags")
    assert data.spec.options == {"price": {"log": True}}
    train = data.read_split("train")
    assert list(train.columns) == [C.USER_ID, C.ITEM_ID, C.CLICK, C.TIMESTAMP, "rating"]  # the label stays
    assert train[C.USER_ID].str.startswith("user-").all() and train[C.ITEM_ID].str.startswith("SKU").all()
    raw = pd.concat([pd.read_parquet(p) for p in sorted((own.parent / "events").glob("*.parquet"))])
    assert sum(data.counts[f"{s}_rows"] for s in ("train", "valid", "test")) == len(raw)  # no row lost
    assert sum(data.counts[f"{s}_clicks"] for s in ("train", "valid", "test")) == int((raw["rating"] >= 4).sum())
    items = pd.read_parquet(data.items)
    assert len(items) == 30  # the whole catalog, interacted or not
    tags = items.set_index(C.ITEM_ID)["tags"]
    csv = pd.read_csv(own.parent / "items.csv").set_index("sku")["tags"]
    for sku in items[C.ITEM_ID].head(10):  # csv lists are written a|b
        assert list(tags[sku]) == ([] if pd.isna(csv[sku]) else csv[sku].split("|"))
    assert PreparedData.load(data.root).spec == data.spec


def test_without_tables_features_come_from_the_interactions(own, tmp_path):
    copy = _copy(own, tmp_path)
    events = pd.concat([pd.read_parquet(p) for p in sorted((copy / "events").glob("*.parquet"))])
    users = pd.read_parquet(copy / "users.parquet")
    events.merge(users, on="uid").to_csv(copy / "events.csv", index=False)
    text = (copy / "dataset.yaml").read_text().replace("events/*.parquet", "events.csv").replace("users: users.parquet\n", "")
    spec = _spec(copy, text.replace("interests: list", "interests: categorical"))
    data = _prepare(spec, tmp_path)
    assert set(pd.read_parquet(data.users).columns) == {C.USER_ID, "country", "age", "interests"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"user_id: uid": "user_id: uid\nfavourite_colour: red"}, r"unknown key 'favourite_colour'; known keys: interactions"),
        ({"age: continuous": "age: number"}, r"user_features.age: kind must be one of categorical, continuous, list, got 'number'"),
        ({"age: continuous": "age: {kind: continuous, bins: 3}"}, r"user_features.age: unknown option 'bins' for a continuous feature"),
        ({"country: categorical": "country: {kind: categorical, freq_threshold: -2}"}, r"user_features.country: freq_threshold must be a non-negative integer, got -2"),
        ({"label_threshold: 4": "label_threshold: high"}, r"label_threshold must be a number, got 'high'"),
        ({"item_id: sku\n": ""}, r"item_id is required"),
        ({"age: continuous": "uid: continuous"}, r"'uid' is an id, timestamp or label column, not a feature"),
    ],
    ids=["unknown key", "unknown kind", "unknown option", "bad option value", "non-numeric threshold", "missing key",
         "id as feature"],
)
def test_a_bad_spec_is_one_line_naming_the_file_and_key(own, tmp_path, change, message):
    spec = _spec(_copy(own, tmp_path), **change)
    with pytest.raises(ConfigError, match=f"dataset spec {spec}: {message}"):
        load_spec(spec)


def _events(copy):
    return pd.concat([pd.read_parquet(p) for p in sorted((copy / "events").glob("*.parquet"))], ignore_index=True)


def _rewrite_events(copy, frame):
    for path in (copy / "events").glob("*.parquet"):
        path.unlink()
    frame.to_parquet(copy / "events" / "part-0.parquet", index=False)


def test_a_column_the_files_lack_names_the_file(own, tmp_path):
    copy = _copy(own, tmp_path)
    spec = _spec(copy, **{"country: categorical": "region: categorical"})
    with pytest.raises(DataError, match=r"users.parquet: missing column\(s\) region; found uid, country"):
        _prepare(spec, tmp_path)


@pytest.mark.parametrize("bad", [None, ""], ids=["null", "empty"])
def test_null_or_empty_ids_are_refused_with_the_row(own, tmp_path, bad):
    copy = _copy(own, tmp_path)
    events = _events(copy)
    events.loc[7, "uid"] = bad
    _rewrite_events(copy, events)
    with pytest.raises(DataError, match=r"part-0.parquet: column uid holds 1 null, empty or non-string ids \(first at row 7"):
        _prepare(copy / "dataset.yaml", tmp_path)


def test_a_non_numeric_label_is_refused(own, tmp_path):
    copy = _copy(own, tmp_path)
    _rewrite_events(copy, _events(copy).assign(rating=lambda d: d["rating"].map({1: "bad", 2: "meh", 3: "ok", 4: "good", 5: "top"})))
    with pytest.raises(DataError, match=r"part-0.parquet: label column rating must be numeric, got dtype object"):
        _prepare(copy / "dataset.yaml", tmp_path)


def test_a_list_feature_whose_values_are_not_lists(own, tmp_path):
    copy = _copy(own, tmp_path)
    users = pd.read_parquet(copy / "users.parquet")
    users.assign(interests="books").to_parquet(copy / "users.parquet", index=False)
    with pytest.raises(DataError, match=r"users.parquet: list feature interests holds a str at row 0 \('books'\), not a list"):
        _prepare(copy / "dataset.yaml", tmp_path)


def test_a_continuous_column_that_holds_strings(own, tmp_path):
    copy = _copy(own, tmp_path)
    users = pd.read_parquet(copy / "users.parquet")
    users["age"] = users["age"].astype(str)  # numbers written as text, and one that is not a number
    users.loc[3, "age"] = "unknown"
    users.to_parquet(copy / "users.parquet", index=False)
    with pytest.raises(DataError, match=r"users.parquet: continuous feature age holds non-numbers \(dtype object, e.g. 'unknown' at row 3\)"):
        _prepare(copy / "dataset.yaml", tmp_path)


def test_a_csv_with_ragged_rows(own, tmp_path):
    copy = _copy(own, tmp_path)
    lines = (copy / "items.csv").read_text().splitlines()
    lines[5] += ",surplus,fields"
    (copy / "items.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"items.csv: cannot be read as csv \(.*Expected 4 fields in line 6, saw 6"):
        _prepare(copy / "dataset.yaml", tmp_path)


def test_a_glob_matching_nothing(own, tmp_path):
    spec = _spec(_copy(own, tmp_path), **{"events/*.parquet": "nowhere/*.parquet"})
    with pytest.raises(DataError, match=r"interactions: no file matches '.*nowhere/\*.parquet'"):
        _prepare(spec, tmp_path)


def test_no_positive_row_after_the_threshold(own, tmp_path):
    spec = _spec(_copy(own, tmp_path), **{"label_threshold: 4": "label_threshold: 6"})
    with pytest.raises(DataError, match=r"no interaction has rating >= 6 \(600 rows, rating from 1 to 5\): there is nothing "
                                         r"to learn from; lower label_threshold"):
        _prepare(spec, tmp_path)


def test_a_temporal_split_needs_a_timestamp(own, tmp_path):
    spec = _spec(_copy(own, tmp_path), **{"timestamp: ts\n": ""})
    with pytest.raises(ConfigError, match="--split temporal needs a timestamp column"):
        _prepare(spec, tmp_path, split="temporal")


def test_datetime_timestamps_become_seconds():
    stamps = pd.Series(pd.to_datetime(["2026-01-01T00:00:01Z", "2026-01-01T00:01:00Z"]))
    assert files.seconds(stamps, "f", "ts").tolist() == [1767225601, 1767225660]
    with pytest.raises(DataError, match="timestamp column ts must hold integer seconds or datetimes"):
        files.seconds(pd.Series(["yesterday"]), "f", "ts")
    with pytest.raises(DataError, match="timestamp column ts has 1 empty values"):
        files.seconds(pd.Series([1.0, np.nan]), "f", "ts")


def test_fill_zero_is_kept_and_the_reserved_names_are_refused(own, tmp_path):
    copy = _copy(own, tmp_path)
    spec = load_spec(_spec(copy, **{"age: continuous": "age: {kind: continuous, fill: 0}"}))
    assert files.to_data_spec(spec).options["age"] == {"fill": 0}
    for name in ("created", "event_timestamp", "click", "recent_item_1"):
        bad = _spec(_copy(own, tmp_path / name), **{"country: categorical": f"{name}: categorical"})
        with pytest.raises(ConfigError, match=f"feature name '{name}' is taken by the build"):
            load_spec(bad)


def test_bool_continuous_values_and_log_below_minus_one_are_refused(own, tmp_path):
    copy = _copy(own, tmp_path)
    users = pd.read_parquet(copy / "users.parquet")
    users.assign(age=users["age"] > 40).to_parquet(copy / "users.parquet", index=False)
    with pytest.raises(DataError, match=r"continuous feature age holds non-numbers \(dtype bool, e.g. "):
        _prepare(copy / "dataset.yaml", tmp_path)
    copy = _copy(own, tmp_path / "log")
    items = pd.read_csv(copy / "items.csv")
    items.loc[2, "price"] = -3.0
    items.to_csv(copy / "items.csv", index=False)
    with pytest.raises(DataError, match=r"items.csv: continuous feature price has log: true but holds -3 at row 2"):
        _prepare(copy / "dataset.yaml", tmp_path / "log")


def test_csv_cells_keep_their_text(own, tmp_path):
    """In csv only an empty cell is null ("NA" is Namibia), single-number lists stay lists, datetimes are read."""
    copy = _copy(own, tmp_path)
    events = _events(copy).assign(ts=lambda d: pd.to_datetime(d["ts"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S"))
    users = pd.read_parquet(copy / "users.parquet")
    events.merge(users, on="uid").assign(country="NA", interests="7").to_csv(copy / "events.csv", index=False)
    text = (copy / "dataset.yaml").read_text().replace("events/*.parquet", "events.csv").replace("users: users.parquet\n", "")
    data = _prepare(_spec(copy, text), tmp_path)
    table = pd.read_parquet(data.users)
    assert set(table["country"]) == {"NA"} and all(list(v) == ["7"] for v in table["interests"])
    assert data.read_split("train")[C.TIMESTAMP].min() > 1_600_000_000


def test_integer_ids_in_csv_stay_integers_and_others_strings(tmp_path):
    pd.DataFrame({"u": ["3", "14", "0"], "i": ["007", "8", "9"]}).to_csv(tmp_path / "e.csv", index=False)
    (tmp_path / "s.yaml").write_text("interactions: e.csv\nuser_id: u\nitem_id: i\n")
    reader = files.Reader(load_spec(tmp_path / "s.yaml"))
    assert reader.data_spec(str(tmp_path / "e.csv")).string_ids == (C.ITEM_ID,)  # "007" is not a plain integer


def test_pandas_string_ids_reach_feast_as_strings(tmp_path):
    from datetime import datetime, timezone

    from build_ensemble import feature_store as fs

    users = pd.DataFrame({C.USER_ID: pd.array(["a", "b"], dtype="string"), "age": [1.0, 2.0]})
    items = pd.DataFrame({C.ITEM_ID: pd.array(["x"], dtype="string"), "when": pd.to_datetime(["2026-01-01"])})
    fs.write_repo(tmp_path, users, items, datetime(2026, 1, 2, tzinfo=timezone.utc))
    text = (tmp_path / "features.py").read_text()
    assert 'join_keys=["user_id"], value_type=ValueType.STRING' in text
    assert "Field(name='when', dtype=UnixTimestamp)" in text and "Field(name='age', dtype=Float64)" in text
    with pytest.raises(DataError, match="has a column named created, which the feature store uses"):
        fs.write_repo(tmp_path, users.assign(created=1), items, datetime(2026, 1, 2, tzinfo=timezone.utc))
