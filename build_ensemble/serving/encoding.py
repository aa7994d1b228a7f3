"""The user side of the fitted NVTabular workflow at serving time, as vectorized NumPy.

Every operator a build's workflow can hold on a user column is reproduced here from the
statistics the build extracts (``workflow.serving_encoders``): ``categorify`` (categories and
lists), ``fill`` (FillMedian / FillMissing), ``log`` (LogOp) and ``normalize`` (Normalize).
Tests hold the results equal to NVTabular's own ``Workflow.transform`` on the same rows,
nulls and unseen values included; a workflow with another operator is refused at export.

NVTabular 23.08's Categorify encodes 0 as padding, 1 as null, 2 as out-of-vocabulary and
3.. as the values seen in training; the value of each code is stored in
``categories/unique.<column>.parquet`` (index = code). A list column is encoded element by
element and returned ragged: ``<column>__values`` and ``<column>__offsets`` (Merlin's layout).
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
        self.lookup = dict(zip(np.asarray(values).tolist(), np.asarray(codes, dtype=np.int64).tolist()))

    @classmethod
    def read(cls, categories_dir: str | Path, column: str) -> "CategoryEncoder":
        """Read the mapping of ``column`` from a workflow's ``categories`` folder."""
        table = pd.read_parquet(Path(categories_dir) / unique_file(column))
        return cls(column, table[column].to_numpy(), table.index.to_numpy())

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Encode raw values; None/NaN give the null code, unseen values the OOV code.

        One dict lookup per value: the values come from Feast as Python objects, where this is
        several times faster than NumPy's per-call overhead for the few users of a request
        (a NumPy integer equals, and hashes like, the Python int it holds).

        Args:
            values: ``[n]`` raw values (any dtype; object arrays may hold None).

        Returns:
            ``[n]`` int64 codes.
        """
        lookup = self.lookup
        return np.fromiter((NULL_CODE if _missing(v) else lookup.get(v, OOV_CODE) for v in values),
                           dtype=np.int64, count=len(values))


def _missing(value) -> bool:
    """None, NaN or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and value != value)


def copy_categories(workflow_dir: str | Path, columns: list, target: str | Path) -> Path:
    """Copy the Categorify files of ``columns`` from a saved workflow into ``target/categories``."""
    out = Path(target) / CATEGORIES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for column in columns:
        shutil.copy2(Path(workflow_dir) / CATEGORIES_DIR / unique_file(column), out / unique_file(column))
    return out


STEPS = ("categorify", "fill", "log", "normalize")


class ColumnEncoder:
    """The fitted workflow's operators on one user column.

    Args:
        column: column name.
        kind: ``categorical``, ``list`` or ``continuous``.
        steps: ``[{"op": "categorify"} | {"op": "fill", "value": v} | {"op": "log"} |
            {"op": "normalize", "mean": m, "std": s}]`` in the workflow's order.
        categories: the column's :class:`CategoryEncoder` when a step is ``categorify``.
    """

    def __init__(self, column: str, kind: str, steps: list, categories: CategoryEncoder | None = None):
        unknown = [step["op"] for step in steps if step["op"] not in STEPS]
        if unknown:
            raise ValueError(f"column {column}: no serve-time encoder for {unknown[0]!r}")
        self.column, self.kind, self.steps, self.categories = column, kind, list(steps), categories

    @classmethod
    def read(cls, spec: dict, categories_dir: str | Path) -> "ColumnEncoder":
        """From one entry of ``workflow.serving_encoders`` and the copied category files."""
        categorify = any(step["op"] == "categorify" for step in spec["steps"])
        categories = CategoryEncoder.read(categories_dir, spec["column"]) if categorify else None
        return cls(spec["column"], spec["kind"], spec["steps"], categories)

    def encode(self, values: np.ndarray) -> dict:
        """Encode ``[n]`` raw values (object arrays may hold None; list values are lists).

        Returns:
            ``{column: [n]}`` (int64 codes or float32), or for a list column
            ``{column__values: [m] int64, column__offsets: [n + 1] int64}``.
        """
        if self.kind == "list":
            flat, offsets = to_ragged(values)
            return {f"{self.column}__values": self.categories.encode(flat), f"{self.column}__offsets": offsets}
        if self.kind != "continuous":
            return {self.column: self.categories.encode(values)}
        try:
            x = np.asarray(values, dtype=np.float64)  # None -> NaN
        except (TypeError, ValueError):  # pandas' NA or a non-number: NaN, as NVTabular reads it
            x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
        for step in self.steps:
            if step["op"] == "fill":
                x = np.where(np.isnan(x), step["value"], x)
            elif step["op"] == "log":
                x = np.log(x.astype(np.float32) + 1)
            elif step["op"] == "normalize":
                x = (x - step["mean"]) / step["std"] if step["std"] > 0 else x - step["mean"]
        return {self.column: x.astype(np.float32)}


def to_ragged(values) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` lists (None: empty) as ``([m] flat values, [n + 1] int64 offsets)``."""
    lists = [[] if v is None or (isinstance(v, float) and v != v) else list(v) for v in values]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(v) for v in lists])
    flat = np.empty(int(offsets[-1]), dtype=object)
    flat[:] = [x for v in lists for x in v]
    return flat, offsets
