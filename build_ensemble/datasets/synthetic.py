"""Synthetic Ali-CCP: Merlin's generator (``aliccp-raw``), optionally redrawn over a catalog of a given size.

The features are those of the built-in Ali-CCP spec (``specs/aliccp.yaml``); rows are assigned
80/10/10 to train/valid/test at random and streamed into the prepared layout chunk by chunk.
Users and items are drawn independently, so no model can beat the baselines here: use it
for plumbing and scale, never to judge quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.config import BuildConfig
from build_ensemble.datasets.files import CHUNK_ROWS, to_data_spec
from build_ensemble.datasets.spec import load_builtin
from build_ensemble.prepared import DataSpec, PreparedData, SplitWriter, check_interactions, require_columns
from build_ensemble.progress import Reporter


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


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): ``config.rows`` rows assigned 80/10/10 to
    train/valid/test at random; with ``config.items`` their items are redrawn from a catalog of
    that size (every catalog item is exported, clicked or not)."""
    spec = to_data_spec(load_builtin("aliccp"))
    writer = SplitWriter(root, spec)
    rng = np.random.default_rng(config.seed)
    chunks = synthetic_chunks(config.rows, config.seed)
    if config.items:
        catalog = synthetic_catalog(config.items, config.seed)
        draw = item_sampler(config.items, config.seed)
        writer.add_entities(None, catalog)
    for df in reporter.iterate(chunks, "generate synthetic Ali-CCP", -(-config.rows // CHUNK_ROWS)):
        if config.items:
            df = df.drop(columns=list(spec.item_features)).assign(**{C.ITEM_ID: draw(len(df), rng)})
            df = df.merge(catalog, on=C.ITEM_ID, how="left")
        write_chunk(writer, spec, df, rng.choice(3, size=len(df), p=[0.8, 0.1, 0.1]))
    return writer.close()


def write_chunk(writer: SplitWriter, spec: DataSpec, df: pd.DataFrame, assign: np.ndarray) -> None:
    """Check one chunk of generated rows and write it to the splits ``assign`` gives (``[n]`` of
    0 train, 1 valid, 2 test), collecting its user and item features."""
    source = "synthetic aliccp-raw"
    users, items = list(spec.user_features), list(spec.item_features)
    require_columns(df, [C.USER_ID, C.ITEM_ID, C.CLICK, *users, *items], source)
    df = check_interactions(df, source)
    writer.add_entities(df[[C.USER_ID, *users]], df[[C.ITEM_ID, *items]])
    keep = [c for c in df.columns if c not in users and c not in items]
    for number, name in enumerate(("train", "valid", "test")):
        writer.write(name, df.loc[assign == number, keep])
