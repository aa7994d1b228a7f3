"""Data sources: each module reads or generates one data set and writes the prepared layout
(``build_ensemble.prepared``) into a build folder.

Every source module has ``prepare(config, root, reporter) -> PreparedData``:

- ``config``: the build configuration (each source reads its own options and ``seed``);
- ``root``: the build folder to write into;
- ``reporter``: progress of long loops (``progress.Reporter``; the CLI shows bars).
"""

from __future__ import annotations

import importlib
from typing import Callable

# `--dataset` name (``config.DATASETS``) -> module of this package.
SOURCES = {
    "synthetic-aliccp": "synthetic",
    "aliccp": "aliccp",
    "aliccp-raw": "aliccp_raw",
    "movielens-100k": "movielens",
    "spec": "files",
}


def source(name: str) -> Callable:
    """The ``prepare`` function of the data source called ``name``.

    Raises:
        ValueError: for a name not in :data:`SOURCES`.
    """
    if name not in SOURCES:
        raise ValueError(f"dataset must be one of {', '.join(SOURCES)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{SOURCES[name]}").prepare
