"""Ali-CCP as users download it (``--dataset aliccp-raw --data-dir DIR``): the original csv files
converted by Merlin's own converter (``merlin.datasets.ecommerce.aliccp.prepare_aliccp``),
then read through the built-in Ali-CCP spec (train files: training; test files: valid and test).

``DIR`` holds ``train/sample_skeleton_train.csv``, ``train/common_features_train.csv`` and the
same under ``test/``. Two traps of the converter (merlin-models 23.12) are worked around here:

- It writes a chunk only when a line's index is a positive multiple of ``file_size`` and never
  after its loop, so every line after the last multiple is lost (and with fewer lines than
  ``file_size`` nothing is written). The skeleton is handed to it through a pipe that appends
  skipped padding lines up to the next multiple and then a copy of the last valid line, so the
  final chunk is written; the one extra copy is dropped from the output.
- ``pickle_common_features=True`` writes a pickle next to the user's raw data: it is turned off.
Rows the converter skips by design (``click == 0`` and ``conversion == 1``, inconsistent in the
raw data) stay skipped.
"""

from __future__ import annotations

import os
import re
import threading
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

SPLITS = ("train", "test")
FILE_SIZE = 100_000
PADDING = "padding,0,1,,0,\n"  # click 0, conversion 1: a line the converter skips


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): convert ``config.data_dir``, then the Ali-CCP spec."""
    converted = convert(Path(config.data_dir).expanduser(), root / C.WORK_DIR / "aliccp-raw")
    spec = load_builtin("aliccp", interactions=converted / "train" / "*.parquet",
                        validation=converted / "test" / "*.parquet")
    return prepare_spec(spec, config, root, reporter)


def convert(data_dir: Path, out: Path, file_size: int = FILE_SIZE) -> Path:
    """Run Merlin's converter on the raw files of ``data_dir`` into ``out/{train,test}``, losing no row.

    Raises:
        DataError: if a raw file is missing or a skeleton has no valid line.
    """
    from merlin.datasets.ecommerce.aliccp.dataset import prepare_aliccp

    staged = out / "input"
    feeders = []
    for split in SPLITS:
        skeleton, common = (data_dir / split / f"{name}_{split}.csv" for name in ("sample_skeleton", "common_features"))
        for path in (skeleton, common):
            if not path.exists():
                raise DataError(f"{path} is missing: --data-dir needs Ali-CCP as downloaded "
                                f"(train/ and test/ with sample_skeleton_*.csv and common_features_*.csv)")
        (staged / split).mkdir(parents=True, exist_ok=True)
        link = staged / split / common.name
        if not link.exists():
            link.symlink_to(common.resolve())
        pipe = staged / split / skeleton.name
        if pipe.exists():
            pipe.unlink()
        os.mkfifo(pipe)
        feeders.append(_Feeder(skeleton, pipe, file_size))
    for feeder in feeders:
        feeder.start()
    try:
        prepare_aliccp(str(staged), output_dir=str(out), file_size=file_size, pickle_common_features=False)
    finally:
        for feeder in feeders:
            feeder.release()
    for split, feeder in zip(SPLITS, feeders):
        if feeder.error:
            raise feeder.error
        _drop_one(out / split, feeder.last_valid, data_dir / split / f"common_features_{split}.csv")
    return out


class _Feeder(threading.Thread):
    """Writes a skeleton file into the converter's pipe, then the padding and the repeated last line."""

    def __init__(self, source: Path, pipe: Path, file_size: int):
        super().__init__(daemon=True)
        self.source, self.pipe, self.file_size = source, pipe, file_size
        self.last_valid: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # noqa: BLE001  kept for the caller; a pipe closed by a failed converter lands here
            self.error = self.error or DataError(f"{self.source}: feeding Merlin's converter failed ({type(exc).__name__}: {exc})")

    def release(self, timeout: float = 30.0) -> None:
        """Wait for the feeder; if the converter stopped without reading the pipe (it failed),
        open the pipe's reading end so the writer is not left blocked, and stop it."""
        self.join(timeout=0.5)
        if self.is_alive():
            reader = os.open(self.pipe, os.O_RDONLY | os.O_NONBLOCK)
            os.close(reader)
            self.join(timeout)

    def _feed(self) -> None:
        with open(self.pipe, "w") as out:
            lines = 0
            with open(self.source) as raw:
                for line in raw:
                    out.write(line if line.endswith("\n") else line + "\n")
                    fields = line.split(",", 3)
                    if len(fields) > 3 and not (fields[1] == "0" and fields[2] == "1"):
                        self.last_valid = line.rstrip("\n") + "\n"
                    lines += 1
            if self.last_valid is None:
                self.error = DataError(f"{self.source}: no valid sample line (every line is missing or skipped)")
                return
            while lines == 0 or lines % self.file_size:
                out.write(PADDING)
                lines += 1
            out.write(self.last_valid)  # at a multiple of file_size: the converter writes its last chunk


def _drop_one(folder: Path, line: str, common_path: Path) -> None:
    """Remove one copy of ``line``'s converted row from the converter's output in ``folder``."""
    from merlin.datasets.ecommerce.aliccp.dataset import _Features

    names = _Features().by_id
    fields = line.strip().split(",")
    row = dict(_pairs(fields[5]))
    with open(common_path) as common:
        for record in common:
            parts = record.strip().split(",")
            if parts[0] == fields[3]:
                row.update(_pairs(parts[2]))
                break
    expected = {names[k]: int(v) for k, v in row.items() if k in names}
    expected.update(click=int(fields[1]), conversion=int(fields[2]))
    for part in sorted(folder.glob("*.parquet")):
        table = pd.read_parquet(part)
        match = np.ones(len(table), dtype=bool)
        for column, value in expected.items():
            match &= table[column].to_numpy() == value
        if match.any():
            table.drop(index=table.index[np.flatnonzero(match)[0]]).to_parquet(part, index=False)
            return
    raise DataError(f"{folder}: the converter's output lacks the row of the last sample line; it lost rows")


def _pairs(features: str) -> list:
    """``field \\x01 value \\x03 weight`` entries separated by ``\\x02``, as the converter splits them."""
    values = re.split("[\x01\x02\x03]", features)
    return list(zip(values[0::3], values[1::3]))
