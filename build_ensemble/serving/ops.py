"""Merlin-systems operators of the retrieval graph.

``user_id -> QueryUserFeatures -> EncodeUserFeatures -> PredictQueryTower -> QueryIndex
[-> QueryItemFeatures]``

They follow merlin-systems' operator API (schemas in and out, ``save_artifacts`` /
``load_artifacts``) and replace the stock ``QueryFeast``, ``TransformWorkflow``,
``PredictTensorflow`` and ``QueryFaiss`` where those are wrong for this service: ids stay
int64 (or strings, end to end), each user of a batch gets its own top-k, unknown users get the popular items and a
``fallback`` flag, constructors do no I/O, no absolute path is pickled, and the tower
reloads after unpickling. Artifacts are loaded only from an exported repository
(``load_artifacts(path)``); merlin's ``Graph`` calls it with "" at construction, which is a
no-op. Each operator passes the per-user request columns through (``found``, ``partial``
and the optional ``k``) and declares them in its output schema, so the graph stays a chain
(merlin's executor would run a shared parent twice) and ``config.pbtxt`` follows from the
graph's schemas.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError, RecsysError
from build_ensemble.serving.encoding import CATEGORIES_DIR, ColumnEncoder, copy_categories
from build_ensemble.serving.tower import TOWER_DIR

from merlin.dag import BaseOperator, ColumnSelector  # noqa: E402  (import order: merlin after ours)
from merlin.schema import ColumnSchema, Schema  # noqa: E402

FOUND = "found"
PARTIAL = "partial"
CARRIED = (FOUND, PARTIAL, C.INPUT_K)
QUERY_EMBEDDING = "query_embedding"
INDEX_DIR = "index"


def _table(transformable, columns: dict):
    return type(transformable)(columns)


def _values(transformable, name: str) -> np.ndarray:
    return transformable[name].values


def carry(transformable) -> dict:
    """The per-user request columns present in ``transformable``, to pass on unchanged."""
    return {name: transformable[name].values for name in CARRIED if name in transformable.columns}


def carried_schema(input_schema) -> list:
    """The schemas of the request columns an operator passes on: those of :data:`CARRIED` in its input."""
    return [input_schema[name] for name in CARRIED if name in input_schema.column_names]


def _repository_root(artifact_path: str) -> Path:
    """``<repository>/<model>/<version>/ensemble`` -> ``<repository>``."""
    return Path(artifact_path).resolve().parents[2]


def resolve_feature_repo(artifact_path: str, relative: str) -> Path:
    """Where the feature repository is at serving time.

    ``$BUILD_ENSEMBLE_FEATURE_REPO`` wins; otherwise ``relative`` is taken from the model
    repository's folder (``../feature_repo`` when both sit side by side).
    """
    override = os.environ.get(C.FEATURE_REPO_ENV)
    return Path(override) if override else (_repository_root(artifact_path) / relative).resolve()


class _FeastOperator(BaseOperator):
    """Shared state of the operators that read a Feast feature view online."""

    def __init__(self, feature_repo: str, view: str, entity: str, features: dict):
        super().__init__()
        self.feature_repo = feature_repo
        self.view = view
        self.entity = entity
        self.features = dict(features)
        self._reader = None

    def load_artifacts(self, artifact_path: str = "") -> None:
        from build_ensemble.serving.online_store import OnlineReader, open_store, view_features

        if not artifact_path:  # merlin's Graph() calls this before export: nothing to load yet
            return
        repo = resolve_feature_repo(artifact_path, self.feature_repo)
        try:
            store = open_store(repo)
            present = view_features(store, self.view)
        except RecsysError:
            raise
        except Exception as exc:  # noqa: BLE001  a damaged registry raises whatever its parser does
            raise ArtifactNotFoundError(
                f"feature repository {repo}: view {self.view} cannot be read from the registry "
                f"({type(exc).__name__}: {exc}); rebuild it or run `feast apply` in it"
            ) from None
        missing = set(self.features) - set(present)
        if missing:
            raise ArtifactNotFoundError(
                f"feature repository {repo}: view {self.view} lacks {', '.join(sorted(missing))}; rebuild it"
            )
        self._reader = OnlineReader(store, self.view, self.entity, list(self.features))
        self._reader.check()

    def _read(self, ids: np.ndarray) -> tuple[dict, np.ndarray]:
        try:
            return self._reader.read(ids)
        except Exception as exc:  # the online store is outside this process: say so plainly
            raise RecsysError(f"feature store lookup in view {self.view} failed: {exc}") from exc

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_reader"}


class QueryUserFeatures(_FeastOperator):
    """Reads the raw features of each ``user_id`` from Feast; ``found`` is False for unknown users.

    Args:
        feature_repo: feature repository path relative to the model repository's folder.
        features: ``{name: numpy dtype}`` of the user features to read.
        view: feature view name.
        string_ids: the user ids are strings.
    """

    stage = "features"  # its name in the model's metrics

    def __init__(self, feature_repo: str, features: dict, view: str = C.USER_VIEW, string_ids: bool = False):
        super().__init__(feature_repo, view, C.USER_ID, features)
        self.string_ids = bool(string_ids)

    def transform(self, col_selector: ColumnSelector, transformable):
        ids = _values(transformable, C.USER_ID).reshape(-1)
        ids = ids.astype(object) if self.string_ids else ids.astype(np.int64)
        columns, found = self._read(ids)
        missing = np.equal(np.stack(list(columns.values())), None).any(axis=0) if columns else np.zeros(len(ids), bool)
        return _table(transformable, {**carry(transformable), C.USER_ID: ids, **columns, FOUND: found,
                                      PARTIAL: found & missing})

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        return Schema(
            [ColumnSchema(C.USER_ID, dtype=str if self.string_ids else np.int64)]
            + [ColumnSchema(name, dtype=dtype) for name, dtype in self.features.items()]
            + [ColumnSchema(FOUND, dtype=bool), ColumnSchema(PARTIAL, dtype=bool)]
            + carried_schema(input_schema)
        )


class EncodeUserFeatures(BaseOperator):
    """Applies the user side of the fitted NVTabular workflow (``serving.encoding``, vectorized).

    Args:
        workflow_dir: saved workflow whose categories are copied at export.
        encoders: per user column (``user_id`` and the user features) its kind and fitted
            operators, from ``workflow.serving_encoders``.
    """

    stage = "encode"  # its name in the model's metrics

    def __init__(self, workflow_dir: str, encoders: list):
        super().__init__()
        self.workflow_dir = str(workflow_dir)
        self.encoders = [dict(e) for e in encoders]
        self._encoders: list = []

    @property
    def columns(self) -> list:
        return [e["column"] for e in self.encoders]

    def save_artifacts(self, artifact_path: str) -> None:
        categorified = [e["column"] for e in self.encoders if any(s["op"] == "categorify" for s in e["steps"])]
        copy_categories(self.workflow_dir, categorified, artifact_path)

    def load_artifacts(self, artifact_path: str = "") -> None:
        if not artifact_path:
            return
        folder = Path(artifact_path) / CATEGORIES_DIR
        self._encoders = [ColumnEncoder.read(e, folder) for e in self.encoders]

    def transform(self, col_selector: ColumnSelector, transformable):
        columns: dict = {}
        for encoder in self._encoders:
            columns.update(encoder.encode(_values(transformable, encoder.column)))
        return _table(transformable, {**columns, **carry(transformable)})

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        dtypes = {"categorical": np.int64, "list": np.int64, "continuous": np.float32}
        return Schema(
            [ColumnSchema(e["column"], dtype=dtypes[e["kind"]], is_list=e["kind"] == "list",
                          is_ragged=e["kind"] == "list") for e in self.encoders]
            + carried_schema(input_schema)
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_encoders"}


class PredictQueryTower(BaseOperator):
    """Runs the query tower inside the executor process.

    With ``numpy_dir`` it runs the NumPy copy of the tower that the build checked against
    TensorFlow (same numbers, about 1 ms less per call); otherwise the SavedModel. Unlike
    merlin-systems' ``PredictTensorflow``, it reloads its model from the exported artifacts
    after unpickling.

    Args:
        saved_model_dir: the tower SavedModel written by the build.
        inputs: the names of the tower signature's inputs (a list feature ``f`` as ``f__values``
            and ``f__offsets``).
        output: name of the signature's output.
        dim: embedding size.
        numpy_dir: the verified NumPy tower, or None.
    """

    stage = "tower"  # its name in the model's metrics

    def __init__(self, saved_model_dir: str, inputs: list, output: str, dim: int, numpy_dir: str | None = None):
        super().__init__()
        self.saved_model_dir = str(saved_model_dir)
        self.inputs = list(inputs)
        self.output = output
        self.dim = int(dim)
        self.numpy_dir = str(numpy_dir) if numpy_dir else None
        self._run = None

    def save_artifacts(self, artifact_path: str) -> None:
        source = self.numpy_dir or self.saved_model_dir
        shutil.copytree(source, Path(artifact_path) / TOWER_DIR, dirs_exist_ok=True)

    def load_artifacts(self, artifact_path: str = "") -> None:
        if not artifact_path:
            return
        path = Path(artifact_path) / TOWER_DIR
        if self.numpy_dir:
            from build_ensemble.serving.tower import NumpyTower

            self._run = NumpyTower.load(path)
            return
        import tensorflow as tf

        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        specs = signature.structured_input_signature[1]

        def run(feeds: dict) -> np.ndarray:
            tensors = {name: tf.constant(values, dtype=specs[name].dtype) for name, values in feeds.items()}
            return signature(**tensors)[self.output].numpy()

        self._run = run

    def transform(self, col_selector: ColumnSelector, transformable):
        embedding = self._run(tower_feeds(transformable, self.inputs))
        return _table(transformable, {QUERY_EMBEDDING: embedding, **carry(transformable)})

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        return Schema(
            [ColumnSchema(QUERY_EMBEDDING, dtype=np.float32, dims=(None, self.dim))] + carried_schema(input_schema)
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_run"}


def tower_feeds(transformable, inputs: list) -> dict:
    """The tower's inputs by signature name; a list column ``f`` gives ``f__values`` and ``f__offsets``."""
    feeds = {}
    for name in inputs:
        column, _, part = name.rpartition("__") if name.endswith(("__values", "__offsets")) else (name, "", "")
        feeds[name] = transformable[column].offsets if part == "offsets" else transformable[column].values
    return feeds


class QueryTowerTriton(PredictQueryTower):
    """Calls the query tower served by Triton's TensorFlow backend through BLS.

    Stands in for :class:`PredictQueryTower` when the repository is exported with
    ``tower_backend="tensorflow"``; it only runs inside Triton.

    Args:
        op: the operator it replaces (inputs, output and size of the tower).
        model_name: the Triton model serving the tower.
    """

    export_name = "query_tower"

    def __init__(self, op: PredictQueryTower, model_name: str):
        super().__init__(op.saved_model_dir, op.inputs, op.output, op.dim)  # Triton runs the SavedModel
        self.model_name = model_name

    def save_artifacts(self, artifact_path: str) -> None:
        """The SavedModel lives in the TensorFlow model's folder instead."""

    def load_artifacts(self, artifact_path: str = "") -> None:
        """Nothing to load: Triton serves the tower."""

    def transform(self, col_selector: ColumnSelector, transformable):
        import triton_python_backend_utils as pb_utils

        inputs = [pb_utils.Tensor(name, values.reshape(-1, 1)) for name, values in tower_feeds(transformable, self.inputs).items()]
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, requested_output_names=[self.output], inputs=inputs
        )
        response = request.exec()
        if response.has_error():
            raise RecsysError(f"query tower model {self.model_name}: {response.error().message()}")
        embedding = pb_utils.get_output_tensor_by_name(response, self.output).as_numpy()
        return _table(transformable, {QUERY_EMBEDDING: embedding, **carry(transformable)})


class QueryIndex(BaseOperator):
    """Top-k items of each query embedding from the FAISS index; popular items for unknown users.

    Outputs ``item_ids`` ``[n, k]`` raw ids (int64, or strings), ``scores`` ``[n, k]`` float32 (inner
    products; for fallback rows the items' share of training clicks), ``fallback`` and
    ``partial_features`` ``[n, 1]`` bool. Slots an ANN index leaves empty are filled with
    popular items. ``k`` is ``top_k`` unless the table carries a per-user ``k`` column (the
    request's optional input), in which case the largest is searched; see :attr:`max_k`.

    Args:
        index_dir: folder written by the build (``items.faiss``, ``index.json``, ``popular.parquet``;
            ``items.ivfdata`` for IVF, ``vectors.npy`` and ``row_ids.npy`` for IVF-PQ,
            ``item_ids.parquet`` for string ids).
        top_k: default number of items per user.
        string_ids: the catalog's item ids are strings.
    """

    stage = "index"  # its name in the model's metrics

    def __init__(self, index_dir: str, top_k: int, string_ids: bool = False):
        super().__init__()
        self.index_dir = str(index_dir)
        self.top_k = int(top_k)
        self.string_ids = bool(string_ids)
        self._index = None

    def save_artifacts(self, artifact_path: str) -> None:
        shutil.copytree(self.index_dir, Path(artifact_path) / INDEX_DIR, dirs_exist_ok=True)

    def load_artifacts(self, artifact_path: str = "") -> None:
        if not artifact_path:
            return
        from build_ensemble.serving.index import POPULAR_FILE, load_index

        folder = Path(artifact_path) / INDEX_DIR
        self._index = load_index(folder)
        popular = pd.read_parquet(folder / POPULAR_FILE)
        self._popular_ids = self._index.from_raw(popular[C.ITEM_ID].to_numpy())  # index ids, as searched
        self._popular_scores = popular["score"].to_numpy(np.float32)

    @property
    def max_k(self) -> int:
        """The largest ``k`` a request may ask for: the popular list's length (the build
        stores ``min(catalog, MAX_K)`` items), so that every user can get ``k`` items."""
        return len(self._popular_ids)

    def transform(self, col_selector: ColumnSelector, transformable):
        queries = np.ascontiguousarray(_values(transformable, QUERY_EMBEDDING), dtype=np.float32)
        found = _values(transformable, FOUND).astype(bool).reshape(-1)
        requested = carry(transformable).get(C.INPUT_K)
        n, k = len(found), self.top_k if requested is None else int(np.max(requested))
        ids = np.empty((n, k), dtype=np.int64)
        scores = np.empty((n, k), dtype=np.float32)
        ids[~found], scores[~found] = self._popular_ids[:k], self._popular_scores[:k]
        if found.any():
            found_scores, found_ids = self._index.search(queries[found], k)
            ids[found], scores[found] = self._fill_empty(found_ids, found_scores)
        partial = _values(transformable, PARTIAL).astype(bool).reshape(-1, 1)
        return _table(
            transformable,
            {C.OUTPUT_ITEM_IDS: self._index.to_raw(ids), C.OUTPUT_SCORES: scores, C.OUTPUT_FALLBACK: ~found.reshape(-1, 1),
             C.OUTPUT_PARTIAL: partial},
        )

    def _fill_empty(self, ids: np.ndarray, scores: np.ndarray):
        """Replace the -1 slots of an ANN result by popular items not already listed."""
        for row in np.flatnonzero((ids < 0).any(axis=1)):
            empty = ids[row] < 0
            extra = [i for i in self._popular_ids if i not in set(ids[row])][: int(empty.sum())]
            ids[row, empty] = extra
            scores[row, empty] = scores[row, ~empty].min() if (~empty).any() else 0.0
        return ids, scores

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        return Schema(
            [
                ColumnSchema(C.OUTPUT_ITEM_IDS, dtype=str if self.string_ids else np.int64, dims=(None, None)),
                ColumnSchema(C.OUTPUT_SCORES, dtype=np.float32, dims=(None, None)),
                ColumnSchema(C.OUTPUT_FALLBACK, dtype=bool, dims=(None, 1)),
                ColumnSchema(C.OUTPUT_PARTIAL, dtype=bool, dims=(None, 1)),
            ]
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


PASSED = (C.OUTPUT_ITEM_IDS, C.OUTPUT_SCORES, C.OUTPUT_FALLBACK, C.OUTPUT_PARTIAL)


class QueryItemFeatures(_FeastOperator):
    """Adds the raw features of every candidate from Feast, ready for a ranking stage.

    Each feature ``f`` becomes an output ``item_f`` of shape ``[n, k]``; list features are
    joined with ``|`` into one string.

    Args:
        feature_repo: feature repository path relative to the model repository's folder.
        features: ``{name: numpy dtype}`` of the item features to return.
        view: feature view name.
    """

    stage = "item_features"  # its name in the model's metrics

    def __init__(self, feature_repo: str, features: dict, view: str = C.ITEM_VIEW):
        super().__init__(feature_repo, view, C.ITEM_ID, features)

    @staticmethod
    def output_name(feature: str) -> str:
        return C.ITEM_FEATURE_OUTPUT_PREFIX + feature

    def transform(self, col_selector: ColumnSelector, transformable):
        ids = _values(transformable, C.OUTPUT_ITEM_IDS)
        unique, inverse = np.unique(ids, return_inverse=True)
        columns, _ = self._read(unique)
        out = {name: _values(transformable, name) for name in PASSED}
        for name, dtype in self.features.items():
            values = columns[name][inverse].reshape(ids.shape)
            out[self.output_name(name)] = _as_output(values, dtype)
        return _table(transformable, out)

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        return Schema(
            [input_schema[name] for name in PASSED]
            + [
                ColumnSchema(self.output_name(name), dtype=dtype, dims=(None, None))
                for name, dtype in self.features.items()
            ]
        )


def _as_output(values: np.ndarray, dtype: str) -> np.ndarray:
    """Feast values of an ``[n, k]`` object array as a typed array (missing -> 0 or '')."""
    if dtype != "str":
        return np.where(pd.isna(values), 0, values).astype(dtype)
    flat = ["|".join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray)) else ("" if v is None else str(v))
            for v in values.reshape(-1)]
    return np.array(flat, dtype=object).reshape(values.shape)
