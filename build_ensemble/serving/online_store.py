"""Feast, read online: open a feature repository written by the build and read features by id.

Every Feast call of the package goes through the small functions here (``feast_module``,
``open_store``, ``view_features``, :class:`OnlineReader`), so a Feast upgrade or another
feature store touches one module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError


def feast_module():
    """``import feast`` with its telemetry off: Feast reads ``FEAST_USAGE`` once, when imported,
    and there may be no internet (``FEAST_USAGE=True`` set by the caller is respected)."""
    os.environ.setdefault("FEAST_USAGE", "False")
    import feast

    return feast


def open_store(repo_dir: str | Path, require_registry: bool = True):
    """Open the feature store of a repository written by the build.

    Raises:
        ArtifactNotFoundError: if the repository or (with ``require_registry``) its registry is missing.
    """
    feast = feast_module()
    repo = Path(repo_dir)
    required = ("feature_store.yaml", C.FEAST_REGISTRY) if require_registry else ("feature_store.yaml",)
    for name in required:
        if not (repo / name).exists():
            raise ArtifactNotFoundError(
                f"feature repository {repo}: {name} is missing; run `build-ensemble build` "
                f"(or `feast apply` and `feast materialize` inside it)"
            )
    return feast.FeatureStore(repo_path=str(repo))


def view_features(store, view: str) -> list[str]:
    """Feature names of a feature view, in registry order."""
    return [f.name for f in store.get_feature_view(view).features]


class OnlineReader:
    """Reads one feature view's online features by entity id, selected by name.

    Goes through the online store's ``online_read`` (the interface every Feast online store
    implements) with the feature view resolved once, rather than ``get_online_features``,
    whose per-call request handling and registry lookups cost over ten times more for one
    entity. The SQLite store is read directly from Feast's own table (same keys and value
    protos, through Feast's own encoders), on a read-only connection without the timestamp
    parsing and per-entity regrouping of Feast's ``online_read``: about half the time of a read
    (see :meth:`_sqlite_rows`). Tests hold every path equal to ``get_online_features``.

    Args:
        store: the feature store.
        view: feature view name.
        entity: join key (``user_id`` or ``item_id``).
        features: feature names to read.
    """

    def __init__(self, store, view: str, entity: str, features: list[str]):
        from feast import ValueType
        from feast.infra.provider import get_provider

        self.table = store.get_feature_view(view)
        self.config = store.config
        self.provider = get_provider(store.config)
        self.entity = entity
        self.features = list(features)
        self._position = {name: n for n, name in enumerate(self.features)}  # row of each feature in a read's table
        self.string_keys = store.get_entity(entity).value_type == ValueType.STRING
        self._sqlite = None  # the read-only connection of a SQLite store, opened on first read

    def check(self) -> None:
        """Fail fast when the online store cannot answer (missing or corrupt SQLite file,
        unreachable Redis), so a model does not load only to fail every request.

        Raises:
            ArtifactNotFoundError: naming the store and the problem.
        """
        online = self.config.online_store
        if online.type == "sqlite":
            path = self._sqlite_path()
            if not path.exists():
                raise ArtifactNotFoundError(
                    f"online store {path} is missing: run `build-ensemble build`, or `feast materialize` in {self.config.repo_path}"
                )
        try:
            self.read(np.array([""], dtype=object) if self.string_keys else np.zeros(1, dtype=np.int64))
        except Exception as exc:  # noqa: BLE001  whatever the store raises, say which store and why
            raise ArtifactNotFoundError(
                f"online store ({online.type}) of {self.config.repo_path} cannot be read: {type(exc).__name__}: {exc}"
            ) from None

    def read(self, ids: np.ndarray) -> tuple[dict, np.ndarray]:
        """Features of ``ids``.

        Args:
            ids: ``[n]`` raw ids (int64, or strings for an entity of string join keys).

        Returns:
            ``({feature: [n] object array}, found)`` where ``found`` is ``[n]`` bool: False
            where the store has no row for the id (every feature is None). A missing single
            feature is None too; the workflow's Categorify maps it to its null index.
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        values = [Value(string_val=str(i)) for i in ids] if self.string_keys else [Value(int64_val=int(i)) for i in ids]
        keys = [EntityKey(join_keys=[self.entity], entity_values=[value]) for value in values]
        if self.config.online_store.type == "sqlite":
            rows = self._sqlite_rows(keys)
        else:
            # A copy: Feast's Redis store appends its timestamp key to the list it is given, which
            # grew our list by one per call (latency rose with every request).
            read = self.provider.online_read(
                config=self.config, table=self.table, entity_keys=keys, requested_features=list(self.features)
            )
            rows = ((number, name, value) for number, (_, row) in enumerate(read) for name, value in (row or {}).items())
        position = self._position
        table = np.full((len(self.features), len(keys)), None, dtype=object)
        found = np.zeros(len(keys), dtype=bool)
        for number, name, value in rows:
            if name in position:
                decoded = feast_value_type_to_python_type(value)
                table[position[name], number] = decoded
                found[number] |= decoded is not None
        return dict(zip(self.features, table)), found

    def _sqlite_path(self) -> Path:
        path = Path(self.config.online_store.path)
        return path if path.is_absolute() else Path(self.config.repo_path) / path

    def _sqlite_rows(self, keys: list):
        """``(position, feature, Value)`` of every stored feature of ``keys``, from the table Feast's
        SQLite store writes (``<project>_<view>``: entity_key, feature_name, value, ...)."""
        import sqlite3

        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import _table_id
        from feast.protos.feast.types.Value_pb2 import Value

        if self._sqlite is None:
            self._sqlite = sqlite3.connect(f"{self._sqlite_path().resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False)
        version = self.config.entity_key_serialization_version
        positions: dict = {}
        for number, key in enumerate(keys):
            positions.setdefault(serialize_entity_key(key, entity_key_serialization_version=version), []).append(number)
        cursor = self._sqlite.execute(
            f"SELECT entity_key, feature_name, value FROM {_table_id(self.config.project, self.table)} "
            f"WHERE entity_key IN ({','.join('?' * len(positions))})", list(positions))
        for key, name, blob in cursor.fetchall():
            value = Value.FromString(blob)
            for number in positions[key]:
                yield number, name, value


def read_online(store, view: str, entity: str, ids: np.ndarray, features: list[str]) -> tuple[dict, np.ndarray]:
    """One-off read of :class:`OnlineReader` (see there)."""
    return OnlineReader(store, view, entity, features).read(ids)
