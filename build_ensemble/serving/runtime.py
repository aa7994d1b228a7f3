"""Runs the exported retrieval graph: unpickle it, load its operators' artifacts, call them in order."""

from __future__ import annotations

import json
import pickle
import platform
import time
from pathlib import Path

import numpy as np

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError
from build_ensemble.serving.ops import QueryIndex


class Column:
    """One column of :class:`Columns`: ``values``, and ``offsets`` for a list column."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: np.ndarray, offsets: np.ndarray | None = None):
        self.values, self.offsets = values, offsets


class Columns:
    """The table the runtime passes from operator to operator: named NumPy arrays.

    It offers the operators what merlin's ``TensorTable`` does (``table[name].values``,
    ``.offsets``, ``table.columns``, ``type(table)(columns)``, a list column given as
    ``name__values`` and ``name__offsets``) without its per-column dtype dispatch, which cost
    about 0.3 ms of a 1 ms single-user request (profiled in process). The operators work on
    either.
    """

    def __init__(self, columns: dict):
        self._columns = {}
        for name, values in columns.items():
            if name.endswith("__offsets"):
                continue
            if name.endswith("__values"):
                column = name[: -len("__values")]
                self._columns[column] = Column(values, columns[f"{column}__offsets"])
            else:
                self._columns[name] = Column(values)

    @property
    def columns(self) -> list:
        return list(self._columns)

    def __getitem__(self, name: str) -> Column:
        return self._columns[name]


def graph_nodes(ensemble) -> list:
    """The graph's nodes, inputs first."""
    from merlin.dag import postorder_iter_nodes

    return list(postorder_iter_nodes(ensemble.graph.output_node))


class RetrievalRuntime:
    """Runs the retrieval graph in process (the Triton model and the tests use it).

    The graph is a chain, so its operators are called in order; merlin's generic executor,
    which re-derives column selections on every call, costs more than the operators themselves.
    """

    def __init__(self):
        self._chains: dict = {}

    @staticmethod
    def load(ensemble, artifact_path: str) -> None:
        """Load every operator's artifacts (index, tower, categories, feature store)."""
        for node in graph_nodes(ensemble):
            node.op.load_artifacts(artifact_path)

    def chain(self, ensemble) -> list:
        """The graph's operator nodes in call order.

        Raises:
            ValueError: if the graph is not a chain (a node with several inputs).
        """
        if id(ensemble) not in self._chains:
            nodes = graph_nodes(ensemble)
            for previous, node in zip(nodes, nodes[1:]):
                if node.parents_with_dependencies != [previous]:
                    raise ValueError(f"{type(node.op).__name__} does not read only its predecessor's output")
            self._chains[id(ensemble)] = nodes[1:]
        return self._chains[id(ensemble)]

    def index_op(self, ensemble) -> QueryIndex:
        """The graph's :class:`QueryIndex` (its ``top_k`` and ``max_k`` bound the request's ``k``)."""
        return next(node.op for node in self.chain(ensemble) if isinstance(node.op, QueryIndex))

    def transform(self, ensemble, table, seconds: dict | None = None):
        """Run the graph on a table holding ``user_id`` (and optionally ``k``).

        Args:
            ensemble: the graph.
            table: the request columns.
            seconds: if given, receives each operator's time by its ``stage`` name.
        """
        for node in self.chain(ensemble):
            start = time.perf_counter()
            table = node.op.transform(node.input_columns, table)
            if seconds is not None:
                seconds[node.op.stage] = time.perf_counter() - start
        return table


def built_by(version_dir: Path) -> str:
    """One line naming the Python and package versions that exported a model version (from its manifest)."""
    try:
        manifest = json.loads((version_dir / C.MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return f"{version_dir} has no readable {C.MANIFEST_FILE}"
    packages = ", ".join(f"{k} {v}" for k, v in manifest.get("packages", {}).items() if v)
    return (f"exported with Python {manifest.get('python', '?')} ({packages}); "
            f"this server runs Python {platform.python_version()}")


class _Unpickler(pickle.Unpickler):
    """Reads merlin-systems' pickled ``Ensemble`` as a plain object holding its graph.

    ``merlin.systems.dag`` imports the export runtimes and, through them, NVTabular's fitting
    machinery; serving needs only ``ensemble.graph``, whose classes (``merlin.dag``, our operators)
    load as usual.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("merlin.systems.dag.ensemble", "Ensemble"):
            return _EnsembleState
        return super().find_class(module, name)


class _EnsembleState:
    """The attributes of an unpickled merlin-systems ``Ensemble`` (``graph`` and ``label_columns``)."""


def read_graph(artifact_path: Path):
    """The exported ensemble (``ensemble.pkl``), with its graph, without importing ``merlin.systems``."""
    with open(artifact_path / "ensemble.pkl", "rb") as file:
        return _Unpickler(file).load()


def load_ensemble(artifact_path: str | Path):
    """Unpickle the exported graph and load its operators' artifacts.

    Returns:
        ``(ensemble, runtime)`` ready to transform.

    Raises:
        ArtifactNotFoundError: if the graph cannot be unpickled here (other Python or package
            versions, or a repository of an older layout), naming the versions that built it.
    """
    artifact_path = Path(artifact_path)
    try:
        ensemble = read_graph(artifact_path)
    except (ImportError, AttributeError, pickle.UnpicklingError, OSError) as exc:
        raise ArtifactNotFoundError(
            f"the graph in {artifact_path} cannot be loaded ({type(exc).__name__}: {exc}); "
            f"{built_by(artifact_path.parent)}: rebuild or re-export it with this environment"
        ) from None
    runtime = RetrievalRuntime()
    runtime.load(ensemble, str(artifact_path))
    return ensemble, runtime
