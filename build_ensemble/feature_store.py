"""The Feast feature repository: write it, apply and materialize it, read features online.

The repository keeps every path relative to its own folder (file registry, SQLite online
store, parquet sources), so it can be copied or moved as a whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError, ConfigError

os.environ.setdefault("FEAST_USAGE", "False")  # no telemetry: there may be no internet

logger = logging.getLogger(__name__)

TEMPLATE_FILES = ("feature_store.yaml", "features.py", ".feastignore")
USER_SOURCE = "data/user_features.parquet"
ITEM_SOURCE = "data/item_features.parquet"


SQLITE_STORE = """online_store:
  type: sqlite
  path: data/online_store.db
"""


def redis_connection_string(url: str) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=N[,password=P]``) of a ``redis://`` URL.

    Raises:
        ConfigError: if the URL is not ``redis://[:password@]host:port[/db]``.
    """
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "redis" or not parsed.hostname or port is None:
        raise ConfigError(f"redis_url: got {url!r}, expected redis://[:password@]host:port[/db]")
    db = parsed.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"redis_url: database {db!r} in {url!r} is not a number")
    parts = [f"{parsed.hostname}:{port}", f"db={db}"] + ([f"password={parsed.password}"] if parsed.password else [])
    return ",".join(parts)


def check_redis(url: str, timeout: float = 5.0) -> None:
    """Fail fast when the Redis online store does not answer (before a build spends its time).

    Raises:
        ConfigError: naming the URL and the problem.
    """
    import redis

    redis_connection_string(url)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except redis.exceptions.RedisError as exc:
        raise ConfigError(f"online store (redis) at {url} is unreachable: {exc}") from None


def online_store_yaml(kind: str = "sqlite", redis_url: str | None = None) -> str:
    """The ``online_store`` block of ``feature_store.yaml``."""
    if kind == "sqlite":
        return SQLITE_STORE
    if kind == "redis":
        return f'online_store:\n  type: redis\n  connection_string: "{redis_connection_string(redis_url or "")}"\n'
    raise ConfigError(f"online_store: got {kind!r}, expected sqlite or redis")


def write_repo(
    repo_dir: str | Path,
    users: pd.DataFrame,
    items: pd.DataFrame,
    timestamp: datetime,
    online_store: str = "sqlite",
    redis_url: str | None = None,
) -> Path:
    """Write the definitions and the parquet sources of the feature repository.

    Args:
        repo_dir: folder to write (created if needed); its ``data/`` is replaced.
        users: raw user features, one row per ``user_id``.
        items: raw item features, one row per ``item_id``.
        timestamp: tz-aware event time given to every row.
        online_store: ``sqlite`` or ``redis``.
        redis_url: ``redis://host:port/db`` with ``online_store="redis"``.
    """
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (Feast assumes naive times are UTC)")
    repo = Path(repo_dir)
    template = resources.files("build_ensemble") / "templates" / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        text = (template / name).read_text()
        if name == "feature_store.yaml":
            text = text.replace(SQLITE_STORE, online_store_yaml(online_store, redis_url))
        (repo / name).write_text(text)
    data_dir = repo / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    for table, source in ((users, USER_SOURCE), (items, ITEM_SOURCE)):
        table = table.copy()
        for column in table.columns:
            if pd.api.types.is_integer_dtype(table[column].dtype):
                table[column] = table[column].astype("int64")
        table[C.EVENT_TIMESTAMP] = pd.Timestamp(timestamp)
        table[C.CREATED_TIMESTAMP] = pd.Timestamp(timestamp)
        table.to_parquet(repo / source, index=False)
    return repo


def apply_repo(repo_dir: str | Path) -> None:
    """``feast apply``, in process: register the definitions in ``features.py`` and create the tables.

    The definitions file is loaded under a private module name, so several repositories
    can be applied in one process.
    """
    import importlib.util

    from feast import Entity, FeatureService, FeatureView

    repo = Path(repo_dir).resolve()
    spec = importlib.util.spec_from_file_location(f"_feast_definitions_{abs(hash(repo))}", repo / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FeatureView, FeatureService)
    objects = [value for value in vars(module).values() if isinstance(value, kinds)]
    with contextlib.chdir(repo):
        open_store(repo, require_registry=False).apply(objects)


def materialize_repo(repo_dir: str | Path, timestamp: datetime) -> None:
    """Load every row of the parquet sources into the online store.

    An explicit range around the rows' event time is used, so no row is skipped whatever
    the TTL (``materialize-incremental`` would start at now - ttl).
    """
    repo = Path(repo_dir).resolve()
    with contextlib.chdir(repo):
        store = open_store(repo)
        try:
            store.materialize(timestamp - timedelta(seconds=1), datetime.now(timezone.utc) + timedelta(minutes=1))
        except Exception as exc:
            if "connection" not in type(exc).__name__.lower():  # e.g. redis.exceptions.ConnectionError
                raise
            raise ConfigError(f"online store ({store.config.online_store.type}) of {repo} is unreachable: {exc}") from None


def open_store(repo_dir: str | Path, require_registry: bool = True):
    """Open the feature store of a repository written by the build.

    Raises:
        ArtifactNotFoundError: if the repository or (with ``require_registry``) its registry is missing.
    """
    from feast import FeatureStore

    repo = Path(repo_dir)
    required = ("feature_store.yaml", "data/registry.db") if require_registry else ("feature_store.yaml",)
    for required in required:
        if not (repo / required).exists():
            raise ArtifactNotFoundError(
                f"feature repository {repo}: {required} is missing; run `build-ensemble build` "
                f"(or `feast apply` and `feast materialize` inside it)"
            )
    return FeatureStore(repo_path=str(repo))


def view_features(store, view: str) -> list[str]:
    """Feature names of a feature view, in registry order."""
    return [f.name for f in store.get_feature_view(view).features]


class OnlineReader:
    """Reads one feature view's online features by entity id, selected by name.

    Goes through the online store's ``online_read`` (the interface every Feast online store
    implements) with the feature view resolved once, rather than ``get_online_features``,
    whose per-call request handling and registry lookups cost over ten times more for one
    entity; tests hold the two equal.

    Args:
        store: the feature store.
        view: feature view name.
        entity: join key (``user_id`` or ``item_id``).
        features: feature names to read.
    """

    def __init__(self, store, view: str, entity: str, features: list[str]):
        self.table = store.get_feature_view(view)
        self.provider = store._get_provider()
        self.config = store.config
        self.entity = entity
        self.features = list(features)

    def check(self) -> None:
        """Fail fast when the online store cannot answer (missing or corrupt SQLite file,
        unreachable Redis), so a model does not load only to fail every request.

        Raises:
            ArtifactNotFoundError: naming the store and the problem.
        """
        online = self.config.online_store
        if online.type == "sqlite":
            path = Path(online.path)
            path = path if path.is_absolute() else Path(self.config.repo_path) / path
            if not path.exists():
                raise ArtifactNotFoundError(
                    f"online store {path} is missing: run `build-ensemble build`, or `feast materialize` in {self.config.repo_path}"
                )
        try:
            self.read(np.zeros(1, dtype=np.int64))
        except Exception as exc:  # noqa: BLE001  whatever the store raises, say which store and why
            raise ArtifactNotFoundError(
                f"online store ({online.type}) of {self.config.repo_path} cannot be read: {type(exc).__name__}: {exc}"
            ) from None

    def read(self, ids: np.ndarray) -> tuple[dict, np.ndarray]:
        """Features of ``ids``.

        Args:
            ids: ``[n]`` int64 raw ids.

        Returns:
            ``({feature: [n] object array}, found)`` where ``found`` is ``[n]`` bool: False
            where the store has no row for the id (every feature is None). A missing single
            feature is None too; the workflow's Categorify maps it to its null index.
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        keys = [EntityKey(join_keys=[self.entity], entity_values=[Value(int64_val=int(i))]) for i in ids]
        # A copy: Feast's Redis store appends its timestamp key to the list it is given, which
        # grew our list by one per call (latency rose with every request).
        rows = self.provider.online_read(
            config=self.config, table=self.table, entity_keys=keys, requested_features=list(self.features)
        )
        columns = {name: np.full(len(keys), None, dtype=object) for name in self.features}
        found = np.zeros(len(keys), dtype=bool)
        for number, (_, values) in enumerate(rows):
            for name, value in (values or {}).items():
                if name in columns:
                    decoded = feast_value_type_to_python_type(value)
                    columns[name][number] = decoded
                    found[number] |= decoded is not None
        return columns, found


def read_online(store, view: str, entity: str, ids: np.ndarray, features: list[str]) -> tuple[dict, np.ndarray]:
    """One-off read of :class:`OnlineReader` (see there)."""
    return OnlineReader(store, view, entity, features).read(ids)


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of the values (list values stay elements)."""
    out = np.empty(len(values), dtype=object)
    for number, value in enumerate(values):
        out[number] = value
    return out


def read_online_reference(store, view: str, entity: str, ids: np.ndarray, features: list[str]) -> tuple[dict, np.ndarray]:
    """The same read through Feast's public ``get_online_features`` (the reference for tests)."""
    rows = [{entity: int(i)} for i in ids]
    values = store.get_online_features(features=[f"{view}:{name}" for name in features], entity_rows=rows).to_dict()
    columns = {name: _objects(values[name]) for name in features}
    found = np.zeros(len(rows), dtype=bool)
    for column in columns.values():
        found |= np.array([v is not None for v in column], dtype=bool)
    return columns, found
