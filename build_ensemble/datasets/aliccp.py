"""Ali-CCP in its raw parquet format (the seed's 14 columns), read through the built-in dataset spec
``specs/aliccp.yaml``: the training files are the training split, the validation files are
split half/half into valid and test (seeded)."""

from __future__ import annotations

from pathlib import Path

from build_ensemble.config import BuildConfig
from build_ensemble.datasets.files import prepare_spec
from build_ensemble.datasets.spec import load_builtin
from build_ensemble.prepared import PreparedData
from build_ensemble.progress import Reporter


def prepare(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """The source's ``prepare`` (see ``datasets``): ``config.train_glob`` and ``config.valid_glob``."""
    spec = load_builtin("aliccp", interactions=config.train_glob, validation=config.valid_glob)
    return prepare_spec(spec, config, root, reporter)
