import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble import feature_store as fs
from build_ensemble.config import redis_connection_string
from build_ensemble.serving.online_store import open_store, read_online


def test_repo_layout_is_relative_and_complete(feature_repo):
    assert (feature_repo / "feature_store.yaml").read_text().count("data/") == 2
    assert "/" not in (feature_repo / "features.py").read_text().split('path="')[1].split("data/")[0]
    for name in ("registry.db", "online_store.db", "user_features.parquet", "item_features.parquet"):
        assert (feature_repo / "data" / name).exists(), name
    table = pd.read_parquet(feature_repo / C.FEAST_USER_SOURCE)
    assert str(table[C.EVENT_TIMESTAMP].dt.tz) == "UTC" and table[C.USER_ID].dtype == np.int64



def test_the_feast_cli_works_inside_the_repo_after_a_move(feature_repo, tmp_path):
    moved = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(feature_repo, moved)
    feast = str(Path(sys.executable).parent / "feast")
    env = {"FEAST_USAGE": "False", "PATH": str(Path(sys.executable).parent)}
    for args in (["apply"], ["feature-views", "list"]):
        result = subprocess.run([feast, *args], cwd=moved, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert "user_features" in result.stdout and "item_features" in result.stdout
    store = open_store(moved)
    assert read_online(store, C.USER_VIEW, C.USER_ID, np.array([2]), ["age"])[0]["age"].tolist() == [30]



def test_naive_timestamps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="timezone-aware"):
        fs.write_repo(tmp_path, pd.DataFrame(), pd.DataFrame(), datetime(2026, 1, 1))



@pytest.mark.parametrize(
    "url, expected",
    [("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"), ("redis://:secret@redis:6380", "redis:6380,db=0,password=secret"),
     ("redis://r:1/3", "r:1,db=3")],
)
def test_redis_urls_become_feast_connection_strings(url, expected):
    assert redis_connection_string(url) == expected
    assert f'connection_string: "{expected}"' in fs.online_store_yaml("redis", url)


@pytest.mark.parametrize("url", ["http://h:1/0", "redis://h/0", "redis://h:1/x", "h:6379"])
def test_bad_redis_urls_are_refused_with_the_option_named(url):
    from build_ensemble.errors import ConfigError

    with pytest.raises(ConfigError, match="redis_url"):
        redis_connection_string(url)
