"""Checksums of exported model versions, verified before a server loads them.

A model repository holds pickles (the graph) and Python (``model.py``), which run when
Triton loads them. Each version folder the build writes gets a ``manifest.json``: the
build's manifest plus the SHA-256 of every file of that folder. ``verify_repository``
refuses a version whose files differ from it, lack one, or have an extra one.
``__pycache__`` folders are left out: the Python backend writes one next to ``model.py``
when it imports it. The manifest also records the repository format: a version of another
format (its graph pickles operators under module paths this package no longer has) is
refused with one line saying to re-export it.
"""

from __future__ import annotations

import json
from pathlib import Path

from build_ensemble import constants as C
from build_ensemble.artifacts import file_checksums, write_json
from build_ensemble.errors import IntegrityError

CHECKSUMS_KEY = "repository_checksums"
FORMAT_KEY = "repository_format"


def version_folders(repository: Path) -> list:
    """``<model>/<version>`` folders of every model in a repository (numeric names only, as Triton)."""
    return sorted(
        version
        for config in repository.glob("*/config.pbtxt")
        for version in config.parent.iterdir()
        if version.is_dir() and version.name.isdigit()
    )


def folder_checksums(folder: Path) -> dict:
    """SHA-256 of every file under ``folder`` but its manifest and ``__pycache__``, by relative path."""
    names = [p.name for p in folder.iterdir() if p.name != C.MANIFEST_FILE]
    return file_checksums(folder, names, skip=("__pycache__",))


def write_version_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``<folder>/manifest.json``: ``manifest`` with the format and the checksums of the folder's files."""
    values = {**manifest, FORMAT_KEY: C.REPOSITORY_FORMAT, CHECKSUMS_KEY: folder_checksums(folder)}
    return write_json(folder / C.MANIFEST_FILE, values)


def verify_version(folder: Path) -> None:
    """Check one version folder against its manifest.

    Raises:
        IntegrityError: naming the folder or file and what is wrong.
    """
    path = folder / C.MANIFEST_FILE
    if not path.exists():
        raise IntegrityError(
            f"{folder} has no {C.MANIFEST_FILE}: it was not written by `build-ensemble build` "
            f"(serve it anyway with --no-verify only if you trust its origin)"
        )
    try:
        manifest = json.loads(path.read_text())
        expected = manifest[CHECKSUMS_KEY]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{path} is unreadable or has no {CHECKSUMS_KEY}") from None
    if manifest.get(FORMAT_KEY) != C.REPOSITORY_FORMAT:
        raise IntegrityError(
            f"{folder} was exported by another build-ensemble (repository format {manifest.get(FORMAT_KEY, 1)}, "
            f"this one serves {C.REPOSITORY_FORMAT}): re-export it with `build-ensemble export --out BUILD "
            f"--repository {folder.parent.parent} --model-version {folder.name}` or rebuild it (or remove the folder)"
        )
    actual = folder_checksums(folder)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            raise IntegrityError(f"{folder / name} is missing (listed in {path})")
        if name not in expected:
            raise IntegrityError(f"{folder / name} is not in {path}: the folder was changed after the build")
        if actual[name] != expected[name]:
            raise IntegrityError(f"{folder / name} differs from its checksum in {path}: modified after the build")


def verify_repository(repository: str | Path) -> list:
    """Verify every version folder of every model; returns the folders checked.

    Raises:
        IntegrityError: at the first folder that fails.
    """
    folders = version_folders(Path(repository))
    for folder in folders:
        verify_version(folder)
    return folders
