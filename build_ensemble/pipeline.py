"""The build: raw data -> workflow -> model -> evaluation -> artifacts -> feature store, index, repository.

Everything is written to ``<target>.partial`` folders first and moved into place only when
the whole build succeeded, so a failed build never leaves outputs that look good.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble import evaluate as ev
from build_ensemble.config import BuildConfig, make_config
from build_ensemble.data import PreparedData, fingerprint
from build_ensemble.errors import ArtifactNotFoundError
from build_ensemble.export import (
    file_checksums,
    item_popularity,
    manifest,
    plot_history,
    read_embeddings,
    write_embeddings,
    write_json,
)

logger = logging.getLogger(__name__)

MONITOR = "valid_ndcg@10"
INDEX_QUERIES = 1000


class Reporter:
    """Receives progress; the default is silent (the CLI prints)."""

    def stage(self, name: str) -> None:
        """A stage starts."""

    def epoch(self, record: dict) -> None:
        """A training epoch ended."""

    def iterate(self, items: Iterable, desc: str, total: int | None = None) -> Iterable:
        """Wrap a long loop (the CLI shows a progress bar)."""
        return items

    def batches(self, total: int) -> Callable[[int], None] | None:
        """Per-batch progress of the next training epoch: a callable taking a batch count, or None."""
        return None


@dataclass
class BuildResult:
    """Where a build put things and how it scored."""

    out: Path
    feature_repo: Path
    repository: Path
    metrics: dict
    manifest: dict


def partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _replace_dir(staged: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _replace_contents(staged: Path, target: Path, keep: tuple = ("README.md",)) -> None:
    """Move everything from ``staged`` into ``target``, replacing same-named entries and
    removing the rest (except ``keep``)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in staged.iterdir():
        entry.rename(target / entry.name)
    staged.rmdir()


def _merge_models(staged: Path, target: Path, keep: tuple = ("README.md",)) -> None:
    """Move the staged models into ``target``: each version folder, then its ``config.pbtxt``.

    Other versions of those models stay (Triton versioning: a running server can load the
    new one while the old one serves); entries of other models are removed (except ``keep``).
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


def model_version(repository: Path, requested: int, model: str = C.MODEL_NAME) -> int:
    """The version to write: ``requested``, or for 0 one above the highest in the repository."""
    if requested:
        return requested
    present = [int(p.name) for p in (repository / model).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(present, default=0) + 1


class _Timer:
    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seconds: dict = {}

    @contextmanager
    def stage(self, name: str):
        self.reporter.stage(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        logger.info("%s: %.1f s", name, self.seconds[name])


def prepare_data(config: BuildConfig, root: Path, reporter: Reporter) -> PreparedData:
    """Dispatch to the data source named by ``config.dataset``, then add the recent-item features."""
    if config.dataset == "movielens-100k":
        from build_ensemble.movielens import prepare_movielens

        data = prepare_movielens(config, root)
    else:
        from build_ensemble.aliccp import prepare_aliccp

        data = prepare_aliccp(config, root, reporter.iterate)
    if config.recent_items:
        from build_ensemble.history import add_recent_items

        data = add_recent_items(data, config.recent_items)
    return data


def score_build(out: Path, ks: list, exclude_seen: bool, seed: int = 0) -> dict:
    """Test metrics of a build, from its exported embeddings and splits.

    Raises:
        ArtifactNotFoundError: if the build folder lacks embeddings or splits.
    """
    for name in (C.USER_EMBEDDINGS_FILE, C.ITEM_EMBEDDINGS_FILE, C.TEST_FILE):
        if not (out / name).exists():
            raise ArtifactNotFoundError(f"{out / name} is missing: is {out} a finished build?")
    user_ids, users = read_embeddings(out / C.USER_EMBEDDINGS_FILE, C.USER_ID)
    item_ids, items = read_embeddings(out / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID)
    return test_metrics(PreparedData.load(out), ev.Catalog(user_ids, item_ids), users, items, ks, exclude_seen, seed)


def test_metrics(
    data: PreparedData,
    catalog: ev.Catalog,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    ks: list,
    exclude_seen: bool,
    seed: int = 0,
) -> dict:
    """Test Recall@k / NDCG@k of the Two-Tower embeddings and of the most-popular and random baselines.

    The model scores by dot product; the baselines are scored by the same code. With
    ``exclude_seen``, training and validation items are masked.

    Args:
        data: prepared splits.
        catalog: user and item row order of the vectors.
        user_vectors: ``[num_users, dim]`` float32.
        item_vectors: ``[num_items, dim]`` float32.
        ks: cut-offs.
        exclude_seen: mask seen items.
        seed: seed of the random baseline.
    """
    columns = [C.USER_ID, C.ITEM_ID, C.CLICK]
    train, valid, test = (catalog.matrix(data.read_split(s, columns)) for s in ("train", "valid", "test"))
    exclude = (train + valid) if exclude_seen else None
    scorers = {
        "two_tower": ev.dot_scorer(user_vectors, item_vectors),
        "most_popular": ev.popularity_scorer(train),
        "random": ev.random_scorer(len(catalog.item_ids), seed),
    }
    metrics = {"split": "test", "ks": list(ks), "exclude_seen": bool(exclude_seen)}
    for name, scorer in scorers.items():
        result = ev.evaluate(scorer, test, ks, exclude=exclude)
        metrics["users"] = result.pop("users")
        metrics[name] = result
    return metrics


def train_and_embed(
    config: BuildConfig, data: PreparedData, transformed, users: pd.DataFrame, items: pd.DataFrame, reporter: Reporter
):
    """Train with per-epoch full-catalog validation.

    Returns:
        ``(TrainResult, [num_users, dim] user vectors, [num_items, dim] item vectors, encoded users)``,
        rows in the order of ``users`` and ``items``.
    """
    from build_ensemble.train import embed, train_model
    from build_ensemble.workflow import ITEM_SUBGRAPH, USER_SUBGRAPH, encode, load_workflow

    workflow = load_workflow(transformed.workflow_dir)
    user_schema = workflow.get_subworkflow(USER_SUBGRAPH).output_schema
    item_schema = workflow.get_subworkflow(ITEM_SUBGRAPH).output_schema
    encoded_users = encode(workflow, USER_SUBGRAPH, users)
    # History features change with time: validation scores the users as they were before it.
    validation_users = encoded_users
    if data.spec.history_features:
        validation_users = encode(workflow, USER_SUBGRAPH, pd.read_parquet(data.validation_users))
    encoded_items = encode(workflow, ITEM_SUBGRAPH, items)
    catalog = ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy())
    columns = [C.USER_ID, C.ITEM_ID, C.CLICK]
    train = catalog.matrix(data.read_split("train", columns))
    valid = catalog.matrix(data.read_split("valid", columns))
    exclude = train if config.exclude_seen else None

    def validate(model) -> dict:
        user_vectors = embed(model.query_encoder, validation_users, user_schema)
        item_vectors = embed(model.candidate_encoder, encoded_items, item_schema)
        scorer = ev.dot_scorer(user_vectors, item_vectors)
        result = ev.evaluate(scorer, valid, [10], exclude=exclude, max_users=config.eval_users, seed=config.seed)
        return {f"valid_{k}": v for k, v in result.items() if k != "users"}

    result = train_model(config, transformed.train_dir, validate, MONITOR, reporter.epoch, reporter.batches)
    user_vectors = embed(result.model.query_encoder, encoded_users, user_schema)
    item_vectors = embed(result.model.candidate_encoder, encoded_items, item_schema)
    return result, user_vectors, item_vectors, encoded_users


def build(config: BuildConfig, reporter: Reporter | None = None) -> BuildResult:
    """Run the whole pipeline and move its outputs into place.

    Returns:
        Paths of the build folder, feature repository and model repository, with the metrics.
    """
    from build_ensemble import feature_store as fs
    from build_ensemble.ensemble import GraphSpec, export_repository, tower_signature
    from build_ensemble.index import build_index, save_index
    from build_ensemble.integrity import write_version_manifest
    from build_ensemble.tower import compile_tower
    from build_ensemble.train import save_towers
    from build_ensemble.workflow import DaskSettings, fit_workflow

    reporter = reporter or Reporter()
    if config.online_store == "redis":
        fs.check_redis(config.redis_url)
    out, feature_repo, repository = Path(config.out), Path(config.feature_repo), Path(config.repository)
    version = model_version(repository, config.model_version)
    staged_out, staged_repo, staged_models = (_fresh(partial(p)) for p in (out, feature_repo, repository))
    timer = _Timer(reporter)
    try:
        with timer.stage("data"):
            data = prepare_data(config, staged_out, reporter)
        with timer.stage("workflow"):
            dask = DaskSettings(config.workers, config.dask_scheduler, config.worker_memory,
                                str(staged_out / ".work" / "dask"), config.part_size)
            transformed = fit_workflow(data, staged_out, staged_out / ".work", config.seed, dask)
        users = pd.read_parquet(data.users)
        items = pd.read_parquet(data.items)
        with timer.stage("train"):
            result, user_vectors, item_vectors, encoded_users = train_and_embed(config, data, transformed, users, items, reporter)
            query_dir, _ = save_towers(result.model, staged_out)
            inputs = {c: encoded_users[c].to_numpy() for c in encoded_users.columns}
            tower = compile_tower(result.model.query_encoder, inputs, user_vectors, staged_out / C.COMPILED_TOWER_DIR)
        with timer.stage("evaluate"):
            write_embeddings(staged_out / C.USER_EMBEDDINGS_FILE, C.USER_ID, users[C.USER_ID], user_vectors)
            write_embeddings(staged_out / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID, items[C.ITEM_ID], item_vectors)
            metrics = score_build(staged_out, config.ks, config.exclude_seen, config.seed)
            metrics["best_epoch"] = result.best_epoch
            metrics["validation"] = {k: v for k, v in result.history[result.best_epoch - 1].items() if k.startswith("valid_")}
            write_json(staged_out / C.METRICS_FILE, metrics)
            write_json(staged_out / C.HISTORY_FILE, {"history": result.history, "best_epoch": result.best_epoch})
            plot_history(result.history, staged_out / C.LOSS_PLOT_FILE, MONITOR)
        with timer.stage("index"):
            sample = np.random.default_rng(config.seed).permutation(len(user_vectors))[:INDEX_QUERIES]
            index = build_index(
                item_vectors, items[C.ITEM_ID].to_numpy(), user_vectors[np.sort(sample)], config.index, config.top_k,
                seed=config.seed,
            )
            index_dir = save_index(index, staged_out / C.INDEX_DIR)
            train_clicks = data.read_split("train", [C.ITEM_ID, C.CLICK])
            item_popularity(train_clicks, items[C.ITEM_ID].to_numpy()).head(C.MAX_K).to_parquet(
                index_dir / "popular.parquet", index=False
            )
        with timer.stage("feature_store"):
            stamp = datetime.now(timezone.utc).replace(microsecond=0)
            fs.write_repo(staged_repo, users, items, stamp, config.online_store, config.redis_url)
            fs.apply_repo(staged_repo)
            fs.materialize_repo(staged_repo, stamp)
        with timer.stage("ensemble"):
            inputs, output, dim = tower_signature(query_dir)
            spec = GraphSpec(
                tower_inputs=inputs,
                tower_output=output,
                dim=dim,
                user_features={f: _feast_dtype(users[f]) for f in data.spec.user_features},
                item_features={f: _feast_dtype(items[f]) for f in items.columns if f != C.ITEM_ID},
                top_k=config.top_k,
                with_item_features=config.with_item_features,
                numpy_tower=tower["runtime"] == "numpy",
            )
            models = export_repository(staged_out, staged_models, feature_repo, spec, config.tower_backend, version)
        shutil.rmtree(staged_out / ".work", ignore_errors=True)
        info = manifest(
            config.to_dict(),
            {"fingerprint": fingerprint([data.split(s) for s in ("train", "valid", "test")] + [data.users, data.items]),
             **data.counts},
            metrics,
            timer.seconds,
            {
                "index": dataclasses.asdict(index.info),
                "training": {"best_epoch": result.best_epoch, "examples_per_second": round(result.examples_per_second, 1)},
                "query_tower": tower,
                "models": models,
                "graph": dataclasses.asdict(spec),
                "feature_repo": str(feature_repo),
                "repository": str(repository),
                "model_version": version,
                "checksums": file_checksums(
                    staged_out, [C.QUERY_TOWER_DIR, C.COMPILED_TOWER_DIR, C.WORKFLOW_DIR, C.INDEX_DIR]
                ),
            },
        )
        write_json(staged_out / C.MANIFEST_FILE, info)
        for name in models:
            write_version_manifest(staged_models / name / str(version), info)
    except BaseException:
        for staged in (staged_out, staged_repo, staged_models):
            shutil.rmtree(staged, ignore_errors=True)
        raise
    _replace_dir(staged_out, out)
    _replace_contents(staged_repo, feature_repo)
    _merge_models(staged_models, repository)
    return BuildResult(out, feature_repo, repository, metrics, info)


def _feast_dtype(column: pd.Series) -> str:
    """The dtype a feature has after a Feast round trip: int64, float64, or str (strings and lists)."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return "int64"
    if pd.api.types.is_float_dtype(column.dtype):
        return "float64"
    return "str"


def evaluate_build(out: str | Path, ks: list | None = None, exclude_seen: bool | None = None) -> dict:
    """Metrics of an existing build (defaults: the build's own options)."""
    import json

    out = Path(out)
    manifest_path = out / C.MANIFEST_FILE
    if not manifest_path.exists():
        raise ArtifactNotFoundError(f"{manifest_path} is missing: is {out} a finished build?")
    options = make_config(overrides=json.loads(manifest_path.read_text())["options"])
    return score_build(
        out, ks or options.ks, options.exclude_seen if exclude_seen is None else exclude_seen, options.seed
    )
