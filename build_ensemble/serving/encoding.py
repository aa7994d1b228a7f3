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
        values = np.asarray(values)
        codes = np.asarray(codes, dtype=np.int64)
        self.numeric = values.dtype.kind in "iub"
        if self.numeric:
            order = np.argsort(values, kind="stable")
            self.sorted_values, self.sorted_codes = values[order].astype(np.int64), codes[order]
        else:
            self.lookup = dict(zip(values.tolist(), codes.tolist()))

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
        if not self.numeric:
            return np.array([NULL_CODE if v is None or v != v else self.lookup.get(v, OOV_CODE) for v in values],
                            dtype=np.int64)
        missing = pd.isna(values) if values.dtype.kind in "Of" else np.zeros(len(values), dtype=bool)
        clean = np.where(missing, 0, values).astype(np.int64) if missing.any() or values.dtype.kind != "i" else values
        position = np.minimum(np.searchsorted(self.sorted_values, clean), len(self.sorted_values) - 1)
        hit = self.sorted_values[position] == clean
        codes = np.where(hit, self.sorted_codes[position], OOV_CODE)
        return np.where(missing, NULL_CODE, codes).astype(np.int64)


def copy_categories(workflow_dir: str | Path, columns: list, target: str | Path) -> Path:
    """Copy the Categorify files of ``columns`` from a saved workflow into ``target/categories``."""
    out = Path(target) / CATEGORIES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for column in columns:
        shutil.copy2(Path(workflow_dir) / CATEGORIES_DIR / unique_file(column), out / unique_file(column))
    return out
