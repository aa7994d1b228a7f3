import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.datasets import aliccp, files, synthetic
from build_ensemble.datasets.spec import load_builtin
from build_ensemble.config import make_config
from build_ensemble.errors import DataError
from build_ensemble.progress import Reporter


USER_FEATURES = [f.name for f in load_builtin("aliccp").user_features]


@pytest.fixture(scope="module")
def raw_rows():
    return next(synthetic.synthetic_chunks(3000, seed=1))


def _config(tmp_path, **kw):
    return make_config(
        overrides={"dataset": "aliccp", "train_glob": str(tmp_path / "train/*.parquet"),
                   "valid_glob": str(tmp_path / "valid/*.parquet"), **kw}
    )


def _write(raw_rows, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "valid").mkdir()
    raw_rows.iloc[:2000].to_parquet(tmp_path / "train/part-0.parquet")
    raw_rows.iloc[2000:].to_parquet(tmp_path / "valid/part-0.parquet")


def test_real_format_files_are_split_and_keep_raw_ids(raw_rows, tmp_path):
    _write(raw_rows, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    data = aliccp.prepare(_config(tmp_path), out, Reporter())
    train = data.read_split("train")
    assert len(train) == 2000
    assert len(data.read_split("valid")) + len(data.read_split("test")) == 1000
    assert set(train[C.USER_ID]) <= set(raw_rows[C.USER_ID])
    users = pd.read_parquet(data.users)
    assert list(users.columns) == [C.USER_ID, *USER_FEATURES]
    first = raw_rows.drop_duplicates(C.USER_ID).set_index(C.USER_ID)
    for row in users.head(5).itertuples(index=False):
        assert first.loc[row.user_id, "user_age"] == row.user_age
    assert not set(USER_FEATURES) & set(train.columns)


def test_missing_feature_column_names_the_file(raw_rows, tmp_path):
    _write(raw_rows.drop(columns=["item_brand"]), tmp_path)
    with pytest.raises(DataError, match=r"train/part-0\.parquet: missing column\(s\) item_brand"):
        aliccp.prepare(_config(tmp_path), tmp_path, Reporter())


def test_unreadable_file_and_empty_glob(raw_rows, tmp_path):
    _write(raw_rows, tmp_path)
    (tmp_path / "train/part-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"part-1\.parquet: cannot be read as parquet"):
        aliccp.prepare(_config(tmp_path), tmp_path, Reporter())
    with pytest.raises(DataError, match="interactions: no file matches '.*nothing/\*.parquet'"):
        aliccp.prepare(_config(tmp_path, train_glob=str(tmp_path / "nothing/*.parquet")), tmp_path, Reporter())


def test_relative_globs_are_taken_from_the_current_folder(raw_rows, tmp_path, monkeypatch):
    _write(raw_rows, tmp_path)
    monkeypatch.chdir(tmp_path)
    config = make_config(overrides={"dataset": "aliccp", "train_glob": "train/*.parquet", "valid_glob": "valid/*.parquet"})
    (tmp_path / "out").mkdir()
    assert aliccp.prepare(config, tmp_path / "out", Reporter()).counts["train_rows"] == 2000
