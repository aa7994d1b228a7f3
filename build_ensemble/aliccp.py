"""Ali-CCP interactions: real parquet files in the raw format, or Merlin's synthetic generator."""

from __future__ import annotations

import glob as globlib
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from build_ensemble import constants as C
from build_ensemble.config import BuildConfig
from build_ensemble.data import DataSpec, PreparedData, SplitWriter, check_interactions, require_columns
from build_ensemble.errors import DataError

logger = logging.getLogger(__name__)

# The features of the Merlin two-tower example ("the seed").
USER_FEATURES = (
    "user_shops",
    "user_profile",
    "user_group",
    "user_gender",
    "user_age",
    "user_consumption_2",
    "user_is_occupied",
    "user_geography",
    "user_intentions",
    "user_brands",
    "user_categories",
)
ITEM_FEATURES = ("item_category", "item_shop", "item_brand")
SPEC = DataSpec(user_features=USER_FEATURES, item_features=ITEM_FEATURES)
CHUNK_ROWS = 1_000_000


def synthetic_chunks(rows: int, seed: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Yield ``rows`` synthetic Ali-CCP rows in chunks of at most ``chunk_rows``.

    Merlin's generator draws from NumPy's global random state, which is seeded per chunk so
    that a build is reproducible.
    """
    from merlin.datasets.synthetic import generate_data

    for number, start in enumerate(range(0, rows, chunk_rows)):
        np.random.seed((seed * 7919 + number) % 2**32)
        size = min(chunk_rows, rows - start)
        yield generate_data("aliccp-raw", size).to_ddf().compute()


def synthetic_catalog(num_items: int, seed: int) -> pd.DataFrame:
    """A catalog of ``num_items`` items (ids 1..n) with random Ali-CCP item features.

    Feature cardinalities are small enough for every value to be seen in training, so items
    that were never clicked still get distinct embeddings from their feature combination.
    """
    rng = np.random.default_rng(seed + 1)
    ids = np.arange(1, num_items + 1, dtype=np.int64)
    sizes = {"item_category": 100, "item_shop": 1000, "item_brand": 500}
    return pd.DataFrame({C.ITEM_ID: ids, **{f: rng.integers(1, n + 1, num_items) for f, n in sizes.items()}})


def item_sampler(num_items: int, seed: int) -> Callable[[int, np.random.Generator], np.ndarray]:
    """Draws item ids 1..n with a popularity skew (p ~ 1 / (rank + 10)^0.9, ranks shuffled over ids)."""
    ranks = np.arange(num_items)
    weights = 1.0 / (ranks + 10.0) ** 0.9
    cumulative = np.cumsum(weights / weights.sum())
    ids = np.random.default_rng(seed + 2).permutation(num_items) + 1

    def draw(size: int, rng: np.random.Generator) -> np.ndarray:
        position = np.minimum(np.searchsorted(cumulative, rng.random(size)), num_items - 1)
        return ids[position].astype(np.int64)

    return draw


def file_chunks(pattern: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(file, rows)`` from every parquet file matching ``pattern``, chunk by chunk.

    Raises:
        DataError: if nothing matches or a file cannot be read as parquet.
    """
    files = sorted(globlib.glob(pattern))
    if not files:
        raise DataError(f"no file matches {pattern!r}")
    for file in files:
        try:
            reader = pq.ParquetFile(file)
            for batch in reader.iter_batches(batch_size=chunk_rows):
                yield file, batch.to_pandas()
        except (OSError, ValueError) as exc:
            raise DataError(f"{file}: cannot be read as parquet ({exc})") from None


def _write_chunk(writer: SplitWriter, df: pd.DataFrame, source: str, assign: np.ndarray) -> None:
    require_columns(df, [C.USER_ID, C.ITEM_ID, C.CLICK, *USER_FEATURES, *ITEM_FEATURES], source)
    df = check_interactions(df, source)
    writer.add_entities(df[[C.USER_ID, *USER_FEATURES]], df[[C.ITEM_ID, *ITEM_FEATURES]])
    keep = [c for c in df.columns if c not in USER_FEATURES and c not in ITEM_FEATURES]
    for number, name in enumerate(("train", "valid", "test")):
        writer.write(name, df.loc[assign == number, keep])


def prepare_aliccp(config: BuildConfig, root: Path, iterate: Callable = lambda items, desc, total=None: items) -> PreparedData:
    """Write the splits of synthetic or real Ali-CCP data into ``root``.

    Synthetic rows are assigned 80/10/10 to train/valid/test at random; with ``config.items``
    their items are redrawn from a catalog of that size (every catalog item is exported, clicked
    or not). Real data keeps the given training files and splits the validation files half/half
    into valid and test.

    Args:
        config: build configuration.
        root: build folder.
        iterate: wraps the chunk loops (the CLI passes a progress bar).
    """
    writer = SplitWriter(root, SPEC)
    rng = np.random.default_rng(config.seed)
    if config.dataset == "synthetic-aliccp":
        chunks = synthetic_chunks(config.rows, config.seed)
        total = -(-config.rows // CHUNK_ROWS)
        if config.items:
            catalog = synthetic_catalog(config.items, config.seed)
            draw = item_sampler(config.items, config.seed)
            writer.add_entities(None, catalog)
        for df in iterate(chunks, "generate synthetic Ali-CCP", total):
            if config.items:
                df = df.drop(columns=list(ITEM_FEATURES)).assign(**{C.ITEM_ID: draw(len(df), rng)})
                df = df.merge(catalog, on=C.ITEM_ID, how="left")
            _write_chunk(writer, df, "synthetic aliccp-raw", rng.choice(3, size=len(df), p=[0.8, 0.1, 0.1]))
    else:
        for file, df in iterate(file_chunks(config.train_glob), "read Ali-CCP train"):
            _write_chunk(writer, df, file, np.zeros(len(df), dtype=int))
        for file, df in iterate(file_chunks(config.valid_glob), "read Ali-CCP valid"):
            _write_chunk(writer, df, file, rng.choice([1, 2], size=len(df)))
    return writer.close()
