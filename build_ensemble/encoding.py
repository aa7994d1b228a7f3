"""Categorify at serving time: the fitted NVTabular mappings applied as vectorized lookups.

NVTabular 23.08's Categorify encodes 0 as padding, 1 as null, 2 as out-of-vocabulary and
3.. as the values seen in training; the value of each code is stored in
``categories/unique.<column>.parquet`` (index = code). Reading those files gives the same
codes as running the workflow, without its per-request cost (tests hold the two equal).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

NULL_CODE = 1
OOV_CODE = 2
CATEGORIES_DIR = "categories"


def unique_file(column: str) -> str:
    return f"unique.{column}.parquet"


class CategoryEncoder:
    """Codes of one fitted Categorify column.

    Args:
        column: column name.
        values: ``[m]`` values seen in training.
        codes: ``[m]`` int64 code of each value.
    """

    def __init__(self, column: str, values: np.ndarray, codes: np.ndarray):
        self.column = column
        self.index = pd.Index(values)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.numeric = pd.api.types.is_numeric_dtype(self.index.dtype)

    @classmethod
    def read(cls, categories_dir: str | Path, column: str) -> "CategoryEncoder":
        """Read the mapping of ``column`` from a workflow's ``categories`` folder."""
        table = pd.read_parquet(Path(categories_dir) / unique_file(column))
        return cls(column, table[column].to_numpy(), table.index.to_numpy())

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Encode raw values; None/NaN give the null code, unseen values the OOV code.

        Args:
            values: ``[n]`` raw values (any dtype; object arrays may hold None).

        Returns:
            ``[n]`` int64 codes.
        """
        values = np.asarray(values)
        missing = pd.isna(values)
        if self.numeric and values.dtype == object:
            clean = np.where(missing, 0, values).astype(np.int64)
        else:
            clean = values
        position = self.index.get_indexer(clean)
        codes = np.where(position >= 0, self.codes[np.maximum(position, 0)], OOV_CODE)
        return np.where(missing, NULL_CODE, codes).astype(np.int64)


def copy_categories(workflow_dir: str | Path, columns: list, target: str | Path) -> Path:
    """Copy the Categorify files of ``columns`` from a saved workflow into ``target/categories``."""
    out = Path(target) / CATEGORIES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for column in columns:
        shutil.copy2(Path(workflow_dir) / CATEGORIES_DIR / unique_file(column), out / unique_file(column))
    return out
