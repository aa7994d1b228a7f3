"""The NVTabular workflow: Categorify and tag ids and features, keep clicked interactions.

The fitted workflow has two named sub-workflows, ``user`` and ``item``, that encode a user
or item table on their own: serving runs the user side, the item embeddings the item side.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.artifacts import StageResult
from build_ensemble.config import BuildConfig
from build_ensemble.prepared import DataSpec, PreparedData

logger = logging.getLogger(__name__)

USER_SUBGRAPH = "user"
ITEM_SUBGRAPH = "item"
WORKER_PRELOAD = "build_ensemble.dask_worker"  # keeps TensorFlow out of ETL workers
JOINED_ROW_GROUP_ROWS = 200_000  # about 14 MB of joined synthetic Ali-CCP rows in memory
WORK_DIR = C.WORK_DIR


def run(config: BuildConfig, build_dir: Path) -> StageResult:
    """Fit the workflow on the training split of ``build_dir`` and transform train and valid.

    Args:
        config: ``seed`` (training-row shuffle) and the Dask options are used.
        build_dir: build folder holding the prepared data; receives ``workflow/`` and the
            transformed parts under ``.work/transformed/``.
    """
    dask = DaskSettings.from_config(config, build_dir / WORK_DIR / "dask")
    out = fit_workflow(PreparedData.load(build_dir), build_dir, build_dir / WORK_DIR, config.seed, dask)
    summary = {"workers": dask.workers, "scheduler": dask.scheduler, "part_size": dask.part_size}
    return StageResult([out.workflow_dir, out.train_dir, out.valid_dir], {"workflow": summary})


def transformed_dir(build_dir: Path, split: str) -> Path:
    """Where :func:`run` wrote the transformed parts of ``split`` (``train`` or ``valid``)."""
    return _transformed(build_dir / WORK_DIR, split)


def _transformed(work_dir: Path, split: str) -> Path:
    return work_dir / "transformed" / split


@dataclass
class TransformedData:
    """Outputs of the workflow stage."""

    workflow_dir: Path
    train_dir: Path
    valid_dir: Path


def make_workflow(spec: DataSpec, scratch: str | Path):
    """Build the (unfitted) NVTabular workflow for the given features.

    ``user_id`` and ``item_id`` are Categorified and tagged USER_ID/USER and ITEM_ID/ITEM.
    Categorical and list features are Categorified (lists element by element, multi-hot) with
    their ``freq_threshold`` / ``max_size``; continuous features get ``FillMedian`` (or
    ``FillMissing`` with their ``fill``), ``LogOp`` when ``log``, then ``Normalize``, all fitted
    on the training split. User features are tagged USER, item features ITEM, and only rows
    with ``click == 1`` are kept.

    Args:
        spec: which columns are user and item features, and of what kind.
        scratch: where Categorify writes its tables while fitting (``Workflow.save`` copies them).
    """
    import nvtabular as nvt
    from merlin.dag.ops.subgraph import Subgraph
    from nvtabular import ops

    def side(id_column: str, features: tuple, tag_id, tag_features):
        graph = [id_column] >> ops.Categorify(dtype="int64", out_path=str(scratch)) >> tag_id()
        for branch in feature_branches(spec, features, scratch):
            graph = graph + (branch >> tag_features())
        return graph

    user = side(C.USER_ID, spec.user_features, ops.TagAsUserID, ops.TagAsUserFeatures)
    item = side(C.ITEM_ID, spec.item_features, ops.TagAsItemID, ops.TagAsItemFeatures)
    selected = Subgraph(USER_SUBGRAPH, user) + Subgraph(ITEM_SUBGRAPH, item) + [C.CLICK]
    return nvt.Workflow(selected >> ops.Filter(f=_is_click))


def feature_branches(spec: DataSpec, features: tuple, scratch: str | Path) -> list:
    """One NVTabular branch per group of features that share their operators and options."""
    from nvtabular import ops

    groups: dict = {}
    for name in features:
        if name in spec.continuous_features:
            key = ("continuous", spec.option(name, "fill"), bool(spec.option(name, "log", False)))
        else:
            key = ("categorical", spec.option(name, "freq_threshold", 0), spec.option(name, "max_size", 0))
        groups.setdefault(key, []).append(name)
    branches = []
    for (kind, first, second), names in groups.items():
        if kind == "categorical":
            options = {k: v for k, v in (("freq_threshold", first), ("max_size", second)) if v}
            branches.append(names >> ops.Categorify(dtype="int64", out_path=str(scratch), **options))
            continue
        branch = names >> (ops.FillMedian() if first is None else ops.FillMissing(fill_val=first))
        if second:
            branch = branch >> ops.LogOp()
        branches.append(branch >> ops.Normalize(out_dtype=np.float32))
    return branches


def _is_click(df):
    return df[C.CLICK] == 1


def join_features(data: PreparedData, split: str, out_dir: Path, seed: int) -> Path:
    """Join one split's interactions with the user and item features, as a Dask graph.

    Each interaction part is one partition (carrying its rows' history features, if any),
    joined with the (single-partition, broadcast) user and item tables, so the join runs
    wherever Dask runs: on the cluster's workers when a ``distributed.Client`` is active, in
    this process otherwise. Training rows are shuffled within each partition (seeded by
    ``seed`` and the partition's number): the per-user split leaves them grouped by user,
    which would make in-batch negatives degenerate.
    """
    import dask.dataframe as dd
    import pyarrow as pa

    history = list(data.spec.history_features)  # per interaction row, not per user
    static = [f for f in data.spec.user_features if f not in history]
    users = pd.read_parquet(data.users, columns=[C.USER_ID, *static])
    items = pd.read_parquet(data.items, columns=[C.ITEM_ID, *data.spec.item_features])
    parts = sorted(str(p) for p in data.split(split).glob("*.parquet"))
    interactions = dd.read_parquet(parts, columns=[C.USER_ID, C.ITEM_ID, C.CLICK, *history], split_row_groups=False)
    joined = interactions.merge(dd.from_pandas(users, npartitions=1), on=C.USER_ID, how="left")
    joined = joined.merge(dd.from_pandas(items, npartitions=1), on=C.ITEM_ID, how="left")
    if split == "train":
        joined = joined.map_partitions(_shuffle_rows, seed, meta=joined._meta)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # Feature columns keep the parquet types of the feature tables (lists stay lists).
    types = {f.name: f.type for table in (users, items) for f in pa.Schema.from_pandas(table, preserve_index=False)}
    # Row groups are the smallest unit NVTabular can read, so they bound what --part-size can ask for.
    joined.to_parquet(str(out_dir), write_index=False, write_metadata_file=False, schema=types,
                      row_group_size=JOINED_ROW_GROUP_ROWS)
    return out_dir


def _shuffle_rows(df: pd.DataFrame, seed: int, partition_info=None) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else 0
    order = np.random.default_rng([seed, number]).permutation(len(df))
    return df.iloc[order].reset_index(drop=True)


@dataclass
class DaskSettings:
    """Where the workflow runs: Dask's threaded scheduler in this process (the default), a local
    cluster of ``workers`` processes, or an existing cluster at ``scheduler``.

    Attributes:
        workers: local worker processes (0: none); a ``LocalCUDACluster`` when GPUs are present.
        scheduler: ``tcp://host:port`` of a running Dask scheduler (wins over ``workers``).
        worker_memory: memory limit per local worker (``"2GB"``, or ``"auto"``: an equal share);
            past it Dask spills partitions to ``spill_dir``.
        spill_dir: local folder for spilled partitions.
        part_size: in-memory size of one NVTabular partition (the unit a worker holds at once).
    """

    workers: int = 0
    scheduler: str | None = None
    worker_memory: str = "auto"
    spill_dir: str | None = None
    part_size: str = "128MB"

    @classmethod
    def from_config(cls, config: BuildConfig, spill_dir: Path) -> "DaskSettings":
        """The settings of a build configuration, spilling to ``spill_dir``."""
        return cls(workers=config.workers, scheduler=config.dask_scheduler, worker_memory=config.worker_memory,
                   spill_dir=str(spill_dir), part_size=config.part_size)


@contextmanager
def dask_cluster(settings: DaskSettings | None):
    """Make NVTabular run on the cluster ``settings`` describe, for the ``with`` block.

    Yields:
        The ``distributed.Client``, or None for the in-process scheduler.
    """
    if settings is None or not (settings.workers or settings.scheduler):
        yield None
        return
    from distributed import Client
    from merlin.core.utils import Distributed

    cluster = None
    if settings.scheduler:
        client = Client(settings.scheduler)
    else:
        cluster = _local_cluster(settings)
        client = Client(cluster)
    try:
        with Distributed(client=client):
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _local_cluster(settings: DaskSettings):
    from merlin.core.compat import HAS_GPU

    options = {"n_workers": settings.workers, "memory_limit": settings.worker_memory,
               "local_directory": settings.spill_dir, "preload": [WORKER_PRELOAD]}
    if HAS_GPU:
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(**options)
    from distributed import LocalCluster

    return LocalCluster(threads_per_worker=1, processes=True, dashboard_address=None, **options)


def fit_workflow(
    data: PreparedData, run_dir: Path, work_dir: Path, seed: int = 0, dask: DaskSettings | None = None
) -> TransformedData:
    """Fit the workflow on the training split and transform train and valid.

    Args:
        data: prepared raw data.
        run_dir: build folder; the fitted workflow goes to ``run_dir/workflow``.
        work_dir: scratch folder for the joined and transformed parquet parts.
        seed: seed of the training-row shuffle.
        dask: where NVTabular runs (default: in this process).

    Returns:
        Paths of the fitted workflow and of the transformed train and valid parquet parts.
    """
    from merlin.io import Dataset

    workflow = make_workflow(data.spec, work_dir / "fit")
    part_size = (dask or DaskSettings()).part_size
    datasets, out = {}, {}
    with dask_cluster(dask):
        for split in ("train", "valid"):
            joined = join_features(data, split, work_dir / "joined" / split, seed)
            datasets[split] = Dataset(str(joined), engine="parquet", part_size=part_size, cpu=True)
        logger.info("fitting the NVTabular workflow on the training split")
        workflow.fit(datasets["train"])
        workflow_dir = run_dir / C.WORKFLOW_DIR
        if workflow_dir.exists():
            shutil.rmtree(workflow_dir)
        workflow.save(str(workflow_dir))
        for split, dataset in datasets.items():
            out[split] = _transformed(work_dir, split)
            workflow.transform(dataset).to_parquet(str(out[split]), output_files=max(1, dataset.npartitions))
    return TransformedData(workflow_dir, out["train"], out["valid"])


# Operators that only select, join or tag columns: nothing to reproduce at serving time.
PASS_THROUGH = ("SelectionOp", "ConcatColumns", "Subgraph", "TagAsUserID", "TagAsUserFeatures", "TagAsItemID",
                "TagAsItemFeatures", "AddTags", "AddMetadata", "AddProperties")


def serving_encoders(workflow, spec: DataSpec, subgraph: str = USER_SUBGRAPH) -> list:
    """What ``serving.encoding.ColumnEncoder`` needs to reproduce one side of the fitted workflow:
    per input column its kind and its operators with their fitted statistics, in order.

    Raises:
        DataError: for an operator the serve-time encoder does not implement (naming it and
            its column), so that no workflow is served wrong.
    """
    from merlin.dag import postorder_iter_nodes

    from build_ensemble.errors import DataError

    sub = workflow.get_subworkflow(subgraph)
    steps: dict = {}
    for node in postorder_iter_nodes(sub.output_node):
        name = type(node.op).__name__
        if node.op is None or name in PASS_THROUGH:
            continue
        for column in node.output_columns.names:
            step = _step(node.op, name, column)
            if step is None:
                raise DataError(
                    f"the workflow's {name} on column {column} has no serve-time encoder (serving/encoding.py "
                    f"reproduces Categorify, FillMedian, FillMissing, LogOp and Normalize); the repository is not exported"
                )
            steps.setdefault(column, []).append(step)

    def kind(column: str) -> str:
        if column in spec.list_features:
            return "list"
        return "continuous" if column in spec.continuous_features else "categorical"

    return [{"column": c, "kind": kind(c), "steps": steps.get(c, [])} for c in sub.input_schema.column_names]


def _step(op, name: str, column: str) -> dict | None:
    """One fitted operator on one column as plain data, or None if it is not reproduced."""
    if name == "Categorify":
        return {"op": "categorify"}
    if name == "FillMedian" and not op.add_binary_cols:
        return {"op": "fill", "value": float(op.medians[column])}
    if name == "FillMissing" and not op.add_binary_cols:
        return {"op": "fill", "value": float(op.fill_val)}
    if name == "LogOp":
        return {"op": "log"}
    if name == "Normalize":
        return {"op": "normalize", "mean": float(op.means[column]), "std": float(op.stds[column])}
    return None


def load_workflow(workflow_dir: str | Path):
    """Load a fitted workflow saved by :func:`fit_workflow`."""
    import nvtabular as nvt

    return nvt.Workflow.load(str(workflow_dir))


def encode(workflow, subgraph: str, table: pd.DataFrame) -> pd.DataFrame:
    """Encode a raw user or item table with one side of the fitted workflow.

    Args:
        workflow: fitted workflow.
        subgraph: ``user`` or ``item``.
        table: raw ids and features, one row per entity; row order is kept.

    Returns:
        The encoded columns, in the same row order.
    """
    sub = workflow.get_subworkflow(subgraph)
    columns = sub.input_schema.column_names
    return sub.transform(table[columns].reset_index(drop=True))
