"""Build stage: the data source named by the configuration, then the recent-item features."""

from __future__ import annotations

from pathlib import Path

from build_ensemble import datasets
from build_ensemble.artifacts import StageResult
from build_ensemble.config import BuildConfig
from build_ensemble.history import add_recent_items
from build_ensemble.prepared import SPLIT_NAMES, fingerprint
from build_ensemble.progress import Reporter


def run(config: BuildConfig, build_dir: Path, reporter: Reporter) -> StageResult:
    """Write the prepared splits and user / item tables of ``config.dataset`` into ``build_dir``.

    Args:
        config: the data set and its options; ``recent_items`` adds the history features.
        build_dir: build folder.
        reporter: progress of long reads.
    """
    data = datasets.source(config.dataset)(config, build_dir, reporter)
    if config.recent_items:
        data = add_recent_items(data, config.recent_items)
    files = [data.split(s) for s in SPLIT_NAMES] + [data.users, data.items]
    return StageResult(files, {"data": {"fingerprint": fingerprint(files), **data.counts}})

