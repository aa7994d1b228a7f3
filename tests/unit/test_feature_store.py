import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble import feature_store as fs
from build_ensemble.errors import ArtifactNotFoundError

STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast") / "feature_repo"
    users = pd.DataFrame({C.USER_ID: np.array([1, 2, 3], dtype="int32"), "age": [20, 30, 40], "city": ["a", "b", None]})
    items = pd.DataFrame({C.ITEM_ID: [10, 11], "genres": [["x", "y"], []], "year": [1999, 2001]})
    fs.write_repo(root, users, items, STAMP)
    fs.apply_repo(root)
    fs.materialize_repo(root, STAMP)
    return root


def test_repo_layout_is_relative_and_complete(repo):
    assert (repo / "feature_store.yaml").read_text().count("data/") == 2
    assert "/" not in (repo / "features.py").read_text().split('path="')[1].split("data/")[0]
    for name in ("registry.db", "online_store.db", "user_features.parquet", "item_features.parquet"):
        assert (repo / "data" / name).exists(), name
    table = pd.read_parquet(repo / fs.USER_SOURCE)
    assert str(table[C.EVENT_TIMESTAMP].dt.tz) == "UTC" and table[C.USER_ID].dtype == np.int64


def test_online_reads_by_name_and_flags_unknown_ids(repo):
    store = fs.open_store(repo)
    assert set(fs.view_features(store, C.USER_VIEW)) == {"age", "city"}
    columns, found = fs.read_online(store, C.USER_VIEW, C.USER_ID, np.array([3, 1, 99]), ["city", "age"])
    assert found.tolist() == [True, True, False]
    assert columns["age"].tolist() == [40, 20, None]
    assert columns["city"].tolist() == [None, "a", None]  # a missing feature is None, the row still found
    items, found = fs.read_online(store, C.ITEM_VIEW, C.ITEM_ID, np.array([10]), ["genres", "year"])
    assert items["genres"][0] == ["x", "y"] and items["year"][0] == 1999


def test_the_feast_cli_works_inside_the_repo_after_a_move(repo, tmp_path):
    moved = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(repo, moved)
    feast = str(Path(sys.executable).parent / "feast")
    env = {"FEAST_USAGE": "False", "PATH": str(Path(sys.executable).parent)}
    for args in (["apply"], ["feature-views", "list"]):
        result = subprocess.run([feast, *args], cwd=moved, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert "user_features" in result.stdout and "item_features" in result.stdout
    store = fs.open_store(moved)
    assert fs.read_online(store, C.USER_VIEW, C.USER_ID, np.array([2]), ["age"])[0]["age"].tolist() == [30]


def test_missing_repository_is_named(tmp_path):
    with pytest.raises(ArtifactNotFoundError, match="feature_store.yaml is missing"):
        fs.open_store(tmp_path)
    (tmp_path / "feature_store.yaml").write_text("project: x\n")
    with pytest.raises(ArtifactNotFoundError, match="data/registry.db is missing"):
        fs.open_store(tmp_path)


def test_naive_timestamps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="timezone-aware"):
        fs.write_repo(tmp_path, pd.DataFrame(), pd.DataFrame(), datetime(2026, 1, 1))


def test_fast_read_equals_get_online_features(repo):
    store = fs.open_store(repo)
    ids = np.array([2, 99, 1, 3, 1])
    for view, entity, names in ((C.USER_VIEW, C.USER_ID, ["age", "city"]), (C.ITEM_VIEW, C.ITEM_ID, ["genres", "year"])):
        fast, fast_found = fs.read_online(store, view, entity, ids if view == C.USER_VIEW else np.array([11, 10, 5]), names)
        ref, ref_found = fs.read_online_reference(store, view, entity, ids if view == C.USER_VIEW else np.array([11, 10, 5]), names)
        np.testing.assert_array_equal(fast_found, ref_found)
        for name in names:
            assert list(fast[name]) == list(ref[name]), name


@pytest.mark.parametrize(
    "url, expected",
    [("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"), ("redis://:secret@redis:6380", "redis:6380,db=0,password=secret"),
     ("redis://r:1/3", "r:1,db=3")],
)
def test_redis_urls_become_feast_connection_strings(url, expected):
    assert fs.redis_connection_string(url) == expected
    assert f'connection_string: "{expected}"' in fs.online_store_yaml("redis", url)


@pytest.mark.parametrize("url", ["http://h:1/0", "redis://h/0", "redis://h:1/x", "h:6379"])
def test_bad_redis_urls_are_refused_with_the_option_named(url):
    from build_ensemble.errors import ConfigError

    with pytest.raises(ConfigError, match="redis_url"):
        fs.redis_connection_string(url)
