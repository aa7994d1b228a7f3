"""Ali-CCP interactions: real parquet files in the raw format (the seed's 14 columns)."""

from __future__ import annotations

import glob as globlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from build_ensemble import constants as C
from build_ensemble.config import BuildConfig
from build_ensemble.errors import DataError
from build_ensemble.prepared import DataSpec, PreparedData, SplitWriter, check_interactions, require_columns
from build_ensemble.progress import Reporter

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


def write_chunk(writer: SplitWriter, df: pd.DataFrame, source: str, assign: np.ndarray) -> None:
    """Validate one chunk of raw Ali-CCP rows and write it to the splits ``assign`` gives
    (``[n]`` of 0 train, 1 valid, 2 test), collecting its user and item features."""
    require_columns(df, [C.USER_ID, C.ITEM_ID, C.CLICK, *USER_FEATURES, *ITEM_FEATURES], source)
    df = check_interactions(df, source)
    writer.add_entities(df[[C.USER_ID, *USER_FEATURES]], df[[C.ITEM_ID, *ITEM_FEATURES]])
    keep = [c for c in df.columns if c not in USER_FEATURES and c not in ITEM_FEATURES]
    for number, name in enumerate(("train", "valid", "test")):
        writer.write(name, df.loc[assign == number, keep])


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): the files of ``config.train_glob`` are the
    training split, those of ``config.valid_glob`` are split half/half into valid and test (seeded)."""
    writer = SplitWriter(root, SPEC)
    rng = np.random.default_rng(config.seed)
    for file, df in reporter.iterate(file_chunks(config.train_glob), "read Ali-CCP train"):
        write_chunk(writer, df, file, np.zeros(len(df), dtype=int))
    for file, df in reporter.iterate(file_chunks(config.valid_glob), "read Ali-CCP valid"):
        write_chunk(writer, df, file, rng.choice([1, 2], size=len(df)))
    return writer.close()
