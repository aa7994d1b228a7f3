"""The build as a list of stages: raw data -> workflow -> model -> evaluation -> index -> feature store -> repository.

Every stage is a module with ``run(config, build_dir, ...) -> StageResult``; stages share data
only through the build folder, and each one's summary goes into the build's manifest. Outputs
are staged in ``.partial`` folders and published only when every stage succeeded (``publish``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from build_ensemble import constants as C
from build_ensemble import data, evaluate, export, feature_store, index, publish, train, workflow
from build_ensemble.artifacts import StageResult, file_checksums, manifest, write_json
from build_ensemble.config import EXPORT_OPTIONS, BuildConfig, make_config
from build_ensemble.errors import ArtifactNotFoundError, ConfigError
from build_ensemble.progress import Reporter

logger = logging.getLogger(__name__)

CHECKSUMMED = (C.QUERY_TOWER_DIR, C.COMPILED_TOWER_DIR, C.WORKFLOW_DIR, C.INDEX_DIR)


@dataclass
class BuildResult:
    """Where a build put things and how it scored."""

    out: Path
    feature_repo: Path
    repository: Path
    metrics: dict
    manifest: dict


class Stages:
    """Runs stages in order, timing each and collecting their summaries."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seconds: dict = {}
        self.summary: dict = {}

    def run(self, name: str, stage: Callable[..., StageResult], *args) -> StageResult:
        self.reporter.stage(name)
        start = time.perf_counter()
        result = stage(*args)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.reporter.stage_done(name, self.seconds[name])
        self.summary.update(result.summary)
        logger.info("%s: %.1f s", name, self.seconds[name])
        return result


def build(config: BuildConfig, reporter: Reporter | None = None) -> BuildResult:
    """Run every stage and publish the build folder, feature repository and model repository.

    Returns:
        Paths of the build folder, feature repository and model repository, with the metrics.
    """
    if config.online_store == "redis":
        feature_store.check_redis(config.redis_url)
    targets = publish.Targets(Path(config.out), Path(config.feature_repo), Path(config.repository))
    version = publish.model_version(targets.repository, config.model_version)
    stages = Stages(reporter or Reporter())
    with publish.staging(targets) as staged:
        stages.run("data", data.run, config, staged.out, stages.reporter)
        export.check_tower_backend(config, staged.out)
        stages.run("workflow", workflow.run, config, staged.out)
        stages.run("train", train.run, config, staged.out, stages.reporter)
        stages.run("evaluate", evaluate.run, config, staged.out)
        stages.run("index", index.run, config, staged.out)
        stages.run("feature_store", feature_store.run, config, staged.out, staged.feature_repo)
        stages.run("export", export.run, config, staged.out, staged.repository, targets.feature_repo, version)
        shutil.rmtree(staged.out / workflow.WORK_DIR, ignore_errors=True)
        info = manifest(config.to_dict(), stages.seconds, {
            **stages.summary,
            "feature_repo": str(targets.feature_repo.resolve()),
            "repository": str(targets.repository.resolve()),
            "checksums": file_checksums(staged.out, list(CHECKSUMMED)),
        })
        write_json(staged.out / C.MANIFEST_FILE, info)
        publish.write_version_manifests(staged.repository, info["models"], version, info)
        publish.publish_build(staged, targets)
    return BuildResult(targets.out, targets.feature_repo, targets.repository, info["metrics"], info)


def read_manifest(out: str | Path) -> dict:
    """The manifest of a finished build folder.

    Raises:
        ArtifactNotFoundError: if ``out`` holds no manifest.
    """
    path = Path(out) / C.MANIFEST_FILE
    if not path.exists():
        raise ArtifactNotFoundError(f"{path} is missing: is {out} a finished build?")
    return json.loads(path.read_text())


def export_build(out: str | Path, repository: str | Path, feature_repo: str | Path | None = None,
                 overrides: dict | None = None, reporter: Reporter | None = None) -> dict:
    """Export (or add a version to) a model repository from an existing build, without retraining.

    Args:
        out: a finished build folder.
        repository: model repository to write or add to.
        feature_repo: where the models find the feature repository (default: the build's).
        overrides: repository-level options (``EXPORT_OPTIONS``); the rest are the build's.
        reporter: stage banners.

    Returns:
        The manifest written into the new version folders.

    Raises:
        ArtifactNotFoundError: if ``out`` is not a finished build.
        ConfigError: for an option ``export`` cannot change, or an invalid value.
    """
    out, repository = Path(out), Path(repository)
    built = read_manifest(out)
    unknown = set(overrides or {}) - set(EXPORT_OPTIONS)
    if unknown:
        raise ConfigError(f"export can change {', '.join(EXPORT_OPTIONS)} only, got {', '.join(sorted(unknown))}")
    publish.check_repository_target(repository, out)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    # A new version by default: the versions a server may be serving are left as they are.
    config = make_config(overrides={**built["options"], "model_version": 0, **given})
    feature_repo = Path(feature_repo or built["feature_repo"])
    version = publish.model_version(repository, config.model_version)
    targets = publish.Targets(out, feature_repo, repository)
    stages = Stages(reporter or Reporter())
    with publish.staging(targets, folders=("repository",)) as staged:
        stages.run("export", export.run, config, out, staged.repository, feature_repo, version)
        info = {**built, **stages.summary, "options": config.to_dict(), "exported_from": str(out.resolve()),
                "feature_repo": str(feature_repo.resolve()), "repository": str(repository.resolve())}
        publish.write_version_manifests(staged.repository, info["models"], version, info)
        publish.merge_models(staged.repository, repository)
    return info


def evaluate_build(out: str | Path, ks: list | None = None, exclude_seen: bool | None = None) -> dict:
    """Metrics of an existing build (defaults: the build's own options)."""
    options = make_config(overrides=read_manifest(out)["options"])
    return evaluate.score_build(
        Path(out), ks or options.ks, options.exclude_seen if exclude_seen is None else exclude_seen, options.seed
    )
