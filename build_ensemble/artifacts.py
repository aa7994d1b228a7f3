"""Files of a build folder: embeddings by raw id, JSON, the training plot, checksums and the manifest."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C

PACKAGES = (
    "merlin-core",
    "nvtabular",
    "merlin-models",
    "merlin-systems",
    "tensorflow-cpu",
    "feast",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pyarrow",
    "tritonclient",
)


@dataclass
class StageResult:
    """What a build stage wrote and what it reports.

    Attributes:
        wrote: the files and folders it wrote.
        summary: plain data for the build's manifest (under the stage's name).
    """

    wrote: list
    summary: dict = field(default_factory=dict)


def write_embeddings(path: Path, id_column: str, ids: np.ndarray, embeddings: np.ndarray) -> Path:
    """Write ``[id_column, embedding]`` rows (raw ids, lists of float32).

    Args:
        path: parquet file to write.
        id_column: ``user_id`` or ``item_id``.
        ids: ``[n]`` raw ids (int64, or strings).
        embeddings: ``[n, dim]`` float32.
    """
    pd.DataFrame({id_column: raw_ids(ids), "embedding": list(embeddings.astype(np.float32))}).to_parquet(path, index=False)
    return path


def read_embeddings(path: Path, id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a file written by :func:`write_embeddings`: ``([n] raw ids, [n, dim] float32)``."""
    df = pd.read_parquet(path)
    return raw_ids(df[id_column]), np.stack(df["embedding"].to_numpy()).astype(np.float32)


def raw_ids(values) -> np.ndarray:
    """Raw ids as int64, or as an object array of strings when they are strings."""
    values = np.asarray(values)
    return values.astype(np.int64) if values.dtype.kind in "iub" else values.astype(object)


def write_json(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values, indent=2, sort_keys=False, default=str) + "\n")
    return path


def plot_history(history: list, path: Path, monitor: str) -> Path:
    """PNG of the training loss and the validation metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    right.plot(epochs, [h[monitor] for h in history], marker="o", color="tab:green")
    right.set(title=f"validation {monitor.removeprefix('valid_')}", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_checksums(root: Path, names: list, skip: tuple = ()) -> dict:
    """SHA-256 of each named file, or of each file under each named folder, leaving out files
    inside folders named in ``skip``."""
    sums = {}
    for name in names:
        target = root / name
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            relative = file.relative_to(root)
            if not set(skip) & set(relative.parts[:-1]):
                sums[str(relative)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return sums


def manifest(options: dict, timings: dict, extra: dict) -> dict:
    """The build's manifest: versions, options and timings, with the stages' summaries in ``extra``."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.machine()}",
        "packages": package_versions(),
        "options": options,
        "timings_seconds": timings,
        **extra,
    }


def item_popularity(train: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """Items by training click count, most popular first: ``item_id``, ``count``, ``score``.

    ``score`` is the item's share of training clicks (what the fallback returns).
    """
    clicked = train[train[C.CLICK] == 1] if C.CLICK in train else train
    counts = clicked[C.ITEM_ID].value_counts()
    counts = counts.reindex(item_ids, fill_value=0)
    table = pd.DataFrame({C.ITEM_ID: raw_ids(counts.index.to_numpy()), "count": counts.to_numpy(np.int64)})
    table = table.sort_values(["count", C.ITEM_ID], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["score"] = (table["count"] / max(1, table["count"].sum())).astype(np.float32)
    return table
