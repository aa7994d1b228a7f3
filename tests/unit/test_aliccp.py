import numpy as np
import pandas as pd
import pytest

from build_ensemble import aliccp
from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.errors import DataError


@pytest.fixture(scope="module")
def raw_rows():
    return next(aliccp.synthetic_chunks(3000, seed=1))


def test_synthetic_chunks_are_seeded_and_sized(raw_rows):
    again = next(aliccp.synthetic_chunks(3000, seed=1))
    pd.testing.assert_frame_equal(raw_rows, again)
    sizes = [len(c) for c in aliccp.synthetic_chunks(2500, seed=0, chunk_rows=1000)]
    assert sizes == [1000, 1000, 500]


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
    data = aliccp.prepare_aliccp(_config(tmp_path), out)
    train = data.read_split("train")
    assert len(train) == 2000
    assert len(data.read_split("valid")) + len(data.read_split("test")) == 1000
    assert set(train[C.USER_ID]) <= set(raw_rows[C.USER_ID])
    users = pd.read_parquet(data.users)
    assert list(users.columns) == [C.USER_ID, *aliccp.USER_FEATURES]
    first = raw_rows.drop_duplicates(C.USER_ID).set_index(C.USER_ID)
    for row in users.head(5).itertuples(index=False):
        assert first.loc[row.user_id, "user_age"] == row.user_age
    assert not set(aliccp.USER_FEATURES) & set(train.columns)


def test_missing_feature_column_names_the_file(raw_rows, tmp_path):
    _write(raw_rows.drop(columns=["item_brand"]), tmp_path)
    with pytest.raises(DataError, match=r"train/part-0\.parquet: missing column\(s\) item_brand"):
        aliccp.prepare_aliccp(_config(tmp_path), tmp_path)


def test_unreadable_file_and_empty_glob(raw_rows, tmp_path):
    _write(raw_rows, tmp_path)
    (tmp_path / "train/part-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"part-1\.parquet: cannot be read as parquet"):
        aliccp.prepare_aliccp(_config(tmp_path), tmp_path)
    with pytest.raises(DataError, match="no file matches"):
        list(aliccp.file_chunks(str(tmp_path / "nothing/*.parquet")))


def test_synthetic_rows_split_80_10_10(tmp_path):
    config = make_config(overrides={"rows": 5000, "seed": 2})
    data = aliccp.prepare_aliccp(config, tmp_path)
    rows = np.array([data.counts[f"{s}_rows"] for s in ("train", "valid", "test")])
    assert rows.sum() == 5000
    assert np.allclose(rows / 5000, [0.8, 0.1, 0.1], atol=0.03)


def test_item_count_option_exports_the_whole_catalog(tmp_path):
    config = make_config(overrides={"rows": 4000, "items": 5000, "seed": 1})
    data = aliccp.prepare_aliccp(config, tmp_path)
    items = pd.read_parquet(data.items)
    assert items[C.ITEM_ID].tolist() == list(range(1, 5001))
    assert list(items.columns) == [C.ITEM_ID, *aliccp.ITEM_FEATURES]
    train = data.read_split("train")
    assert train[C.ITEM_ID].between(1, 5000).all()
    counts = train[C.ITEM_ID].value_counts()
    assert counts.iloc[0] > 5 * counts.median()  # popularity skew


def test_items_must_be_positive():
    from build_ensemble.errors import ConfigError

    with pytest.raises(ConfigError, match="items: got 0"):
        make_config(overrides={"items": 0})
