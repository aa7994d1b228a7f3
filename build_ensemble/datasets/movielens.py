"""MovieLens-100K, read from the ``recbole==1.2.1`` wheel (fetched at run time, never committed) and
built through the built-in dataset spec ``specs/movielens-100k.yaml``."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.config import BuildConfig
from build_ensemble.datasets.files import prepare_spec
from build_ensemble.datasets.spec import load_builtin
from build_ensemble.errors import DataError
from build_ensemble.prepared import PreparedData
from build_ensemble.progress import Reporter

logger = logging.getLogger(__name__)

WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
# MovieLens-1M's age groups, applied to the exact ages of ML-100K.
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)


def fetch_wheel(cache_dir: str | Path) -> Path:
    """Download the RecBole wheel that carries ML-100K into ``cache_dir`` (once) and verify it.

    Raises:
        DataError: if pip cannot download it or its checksum differs.
    """
    cache = Path(cache_dir).expanduser()
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s into %s", WHEEL, cache)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "recbole==1.2.1", "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise DataError(f"could not download {WHEEL} with pip: {result.stderr.strip()[-500:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise DataError(f"{wheel}: sha256 {digest} differs from the expected {WHEEL_SHA256}; delete it and retry")
    return wheel


def read_atomic(wheel: Path, kind: str) -> pd.DataFrame:
    """Read one RecBole atomic file (``inter``, ``user``, ``item``) from the wheel.

    Headers look like ``user_id:token``; the type suffix is dropped.
    """
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(MEMBER.format(kind))
    df = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def age_bucket(age: pd.Series) -> pd.Series:
    """Map ages to MovieLens-1M's groups: 0 (<18), 1 (18-24), ..., 6 (56+)."""
    return pd.Series(np.searchsorted(AGE_BUCKETS, age.to_numpy(), side="right"), index=age.index, dtype="int64")


def load_tables(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Interactions, users and items of ML-100K with the features the towers use.

    Every rating is an interaction (``click`` = 1).
    """
    inter = read_atomic(wheel, "inter")
    interactions = pd.DataFrame(
        {
            C.USER_ID: inter["user_id"].astype("int64"),
            C.ITEM_ID: inter["item_id"].astype("int64"),
            C.CLICK: np.ones(len(inter), dtype="int64"),
            "rating": inter["rating"].astype("float32"),
            C.TIMESTAMP: inter["timestamp"].astype(float).astype("int64"),
        }
    )
    user = read_atomic(wheel, "user")
    users = pd.DataFrame(
        {
            C.USER_ID: user["user_id"].astype("int64"),
            "age_bucket": age_bucket(user["age"].astype("int64")),
            "gender": user["gender"],
            "occupation": user["occupation"],
            "zip_prefix": user["zip_code"].str[:2],
        }
    )
    item = read_atomic(wheel, "item")
    year = pd.to_numeric(item["release_year"], errors="coerce").fillna(0).astype("int64")
    items = pd.DataFrame(
        {
            C.ITEM_ID: item["item_id"].astype("int64"),
            "genres": item["class"].str.split().apply(lambda g: sorted(g) if isinstance(g, list) else []),
            "release_year": year,
            "title": item["movie_title"],
        }
    )
    return interactions, users, items


def write_tables(cache_dir: str | Path) -> dict:
    """The three tables of ML-100K as parquet files under ``<cache_dir>/ml-100k/`` (written once,
    from the verified wheel).

    Returns:
        ``{"interactions": path, "users": path, "items": path}``.
    """
    folder = Path(cache_dir).expanduser() / "ml-100k"
    paths = {name: folder / f"{name}.parquet" for name in ("interactions", "users", "items")}
    if not all(p.exists() for p in paths.values()):
        interactions, users, items = load_tables(fetch_wheel(cache_dir))
        folder.mkdir(parents=True, exist_ok=True)
        for (name, path), table in zip(paths.items(), (interactions.drop(columns=[C.CLICK]), users, items)):
            staged = path.with_suffix(".partial")
            table.to_parquet(staged, index=False)
            staged.rename(path)
    return paths


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): the per-user split of ML-100K
    (``config.split``, ``config.seed``) through the built-in spec ``specs/movielens-100k.yaml``."""
    return prepare_spec(load_builtin("movielens-100k", **write_tables(config.cache_dir)), config, root, reporter)
