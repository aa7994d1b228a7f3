import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.config import make_config
from build_ensemble.datasets import synthetic
from build_ensemble.progress import Reporter


@pytest.fixture(scope="module")
def raw_rows():
    return next(synthetic.synthetic_chunks(3000, seed=1))


def test_synthetic_chunks_are_seeded_and_sized(raw_rows):
    again = next(synthetic.synthetic_chunks(3000, seed=1))
    pd.testing.assert_frame_equal(raw_rows, again)
    sizes = [len(c) for c in synthetic.synthetic_chunks(2500, seed=0, chunk_rows=1000)]
    assert sizes == [1000, 1000, 500]


def test_synthetic_rows_split_80_10_10(tmp_path):
    config = make_config(overrides={"rows": 5000, "seed": 2})
    data = synthetic.prepare(config, tmp_path, Reporter())
    rows = np.array([data.counts[f"{s}_rows"] for s in ("train", "valid", "test")])
    assert rows.sum() == 5000
    assert np.allclose(rows / 5000, [0.8, 0.1, 0.1], atol=0.03)


def test_item_count_option_exports_the_whole_catalog(tmp_path):
    config = make_config(overrides={"rows": 4000, "items": 5000, "seed": 1})
    data = synthetic.prepare(config, tmp_path, Reporter())
    items = pd.read_parquet(data.items)
    assert items[C.ITEM_ID].tolist() == list(range(1, 5001))
    assert list(items.columns) == [C.ITEM_ID, "item_category", "item_shop", "item_brand"]
    train = data.read_split("train")
    assert train[C.ITEM_ID].between(1, 5000).all()
    counts = train[C.ITEM_ID].value_counts()
    assert counts.iloc[0] > 5 * counts.median()  # popularity skew


def test_items_must_be_positive():
    from build_ensemble.errors import ConfigError

    with pytest.raises(ConfigError, match="items: got 0"):
        make_config(overrides={"items": 0})


def test_every_dataset_choice_has_a_source():
    from build_ensemble.config import DATASETS
    from build_ensemble.datasets import SOURCES, source

    assert set(SOURCES) == set(DATASETS)
    assert source("synthetic-aliccp") is synthetic.prepare
    with pytest.raises(ValueError, match="dataset must be one of"):
        source("nope")
