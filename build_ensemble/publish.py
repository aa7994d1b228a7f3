"""Publishing a build: outputs are staged in ``<target>.partial`` folders and moved into place
only when every stage succeeded, so a failed build never leaves outputs that look good.

The model repository is merged, not replaced: other versions of the same models stay (Triton
versioning: a running server loads the new one while the old one serves).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from build_ensemble import constants as C
from build_ensemble.integrity import write_version_manifest

KEEP = ("README.md",)  # files of a target folder that publishing leaves alone


@dataclass
class Targets:
    """The three folders a build writes (or their staged copies).

    Attributes:
        out: build folder.
        feature_repo: Feast repository.
        repository: Triton model repository.
    """

    out: Path
    feature_repo: Path
    repository: Path


def partial(path: Path) -> Path:
    """``<path>.partial``: where a target is written before it is moved into place."""
    return path.with_name(path.name + ".partial")


def check_repository_target(repository: Path, build_dir: Path) -> None:
    """Refuse to publish models into a folder that is not a model repository (publishing removes
    what is not a model there) or into the build folder itself.

    Raises:
        ConfigError: naming the folder and what it holds.
    """
    from build_ensemble.errors import ConfigError

    if repository.resolve() == build_dir.resolve():
        raise ConfigError(f"--repository {repository} is the build folder; give the model repository's folder")
    entries = repository.iterdir() if repository.is_dir() else []
    foreign = [e.name for e in entries if e.name not in KEEP and not (e / "config.pbtxt").exists()]
    if foreign:
        raise ConfigError(f"--repository {repository} is not a model repository (it holds {', '.join(sorted(foreign)[:3])}, "
                          f"which are not models); give an empty or new folder, or a model repository")


def model_version(repository: Path, requested: int, model: str = C.MODEL_NAME) -> int:
    """The version to write: ``requested``, or for 0 one above the highest in the repository."""
    if requested:
        return requested
    present = [int(p.name) for p in (repository / model).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(present, default=0) + 1


@contextmanager
def staging(targets: Targets, folders: tuple = ("out", "feature_repo", "repository")):
    """Empty ``.partial`` folders for the named targets; removed if the block fails.

    Yields:
        The staged :class:`Targets` (targets not named keep their final path).
    """
    staged = Targets(**{name: partial(path) if name in folders else path for name, path in vars(targets).items()})
    chosen = [getattr(staged, name) for name in folders]
    for path in chosen:
        _fresh(path)
    try:
        yield staged
    except BaseException:
        for path in chosen:
            shutil.rmtree(path, ignore_errors=True)
        raise


def write_version_manifests(repository: Path, models: list, version: int, manifest: dict) -> None:
    """Write ``<model>/<version>/manifest.json`` (the build's manifest plus the folder's checksums)."""
    for name in models:
        write_version_manifest(repository / name / str(version), manifest)


def publish_build(staged: Targets, targets: Targets) -> None:
    """Move a whole staged build into place: the build folder and the feature repository are
    replaced, the staged models merged into the repository."""
    replace_dir(staged.out, targets.out)
    replace_contents(staged.feature_repo, targets.feature_repo)
    merge_models(staged.repository, targets.repository)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def replace_dir(staged: Path, target: Path) -> None:
    """Put ``staged`` where ``target`` is, removing the old one."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)


def replace_contents(staged: Path, target: Path, keep: tuple = KEEP) -> None:
    """Move everything from ``staged`` into ``target``, replacing same-named entries and
    removing the rest (except ``keep``)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in staged.iterdir():
        entry.rename(target / entry.name)
    staged.rmdir()


def merge_models(staged: Path, target: Path, keep: tuple = KEEP) -> None:
    """Move the staged models into ``target``: each version folder, then its ``config.pbtxt``.

    Other versions of those models stay; entries of other models are removed (except ``keep``).
    """
    target.mkdir(parents=True, exist_ok=True)
    names = {model.name for model in staged.iterdir()}
    for entry in target.iterdir():
        if entry.name not in keep and entry.name not in names:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for model in staged.iterdir():
        (target / model.name).mkdir(exist_ok=True)
        for entry in sorted(model.iterdir(), key=lambda e: e.is_file()):  # folders first, config last
            destination = target / model.name / entry.name
            if destination.is_dir():
                shutil.rmtree(destination)
            entry.rename(destination)
    shutil.rmtree(staged)
