"""Fixtures of the unit tests: a small Feast repository written, applied and materialized by the build's functions."""

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble import feature_store as fs

STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def feature_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast") / "feature_repo"
    users = pd.DataFrame({C.USER_ID: np.array([1, 2, 3], dtype="int32"), "age": [20, 30, 40], "city": ["a", "b", None]})
    items = pd.DataFrame({C.ITEM_ID: [10, 11], "genres": [["x", "y"], []], "year": [1999, 2001]})
    fs.write_repo(root, users, items, STAMP)
    fs.apply_repo(root)
    fs.materialize_repo(root, STAMP)
    return root
