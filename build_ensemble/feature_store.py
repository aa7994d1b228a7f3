"""Build stage: the Feast feature repository, written from the package's template, applied and materialized.

The repository keeps every path relative to its own folder (file registry, SQLite online
store, parquet sources), so it can be copied or moved as a whole. The serving side reads it
through ``serving.online_store``.
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.artifacts import StageResult
from build_ensemble.config import BuildConfig, redis_connection_string
from build_ensemble.errors import ConfigError, DataError
from build_ensemble.serving.online_store import feast_module, open_store

# Template file -> file of the repository (features.py.tmpl holds placeholders outside strings).
TEMPLATE_FILES = {"feature_store.yaml": "feature_store.yaml", "features.py.tmpl": "features.py", ".feastignore": ".feastignore"}
# Every name the template uses, from `constants`: one place for the Feast names.
TEMPLATE_NAMES = {
    "project": C.FEAST_PROJECT,
    "registry": C.FEAST_REGISTRY,
    "user_id": C.USER_ID,
    "item_id": C.ITEM_ID,
    "user_view": C.USER_VIEW,
    "item_view": C.ITEM_VIEW,
    "user_service": C.USER_SERVICE,
    "item_service": C.ITEM_SERVICE,
    "user_source": C.FEAST_USER_SOURCE,
    "item_source": C.FEAST_ITEM_SOURCE,
    "event_timestamp": C.EVENT_TIMESTAMP,
    "created_timestamp": C.CREATED_TIMESTAMP,
}


def run(config: BuildConfig, build_dir: Path, repo_dir: Path) -> StageResult:
    """Write the repository from the build's user and item tables, apply it and load every row online.

    Args:
        config: ``online_store`` and ``redis_url`` are used.
        build_dir: build folder holding ``user_features.parquet`` and ``item_features.parquet``.
        repo_dir: folder to write the repository into.
    """
    users = pd.read_parquet(build_dir / C.USER_FEATURES_FILE)
    items = pd.read_parquet(build_dir / C.ITEM_FEATURES_FILE)
    stamp = datetime.now(timezone.utc).replace(microsecond=0)
    write_repo(repo_dir, users, items, stamp, config.online_store, config.redis_url)
    apply_repo(repo_dir)
    materialize_repo(repo_dir, stamp)
    summary = {"online_store": config.online_store, "users": len(users), "items": len(items), "event_time": stamp}
    return StageResult([repo_dir], summary)


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
        return f"online_store:\n  type: sqlite\n  path: {C.FEAST_SQLITE_STORE}"
    if kind == "redis":
        return f'online_store:\n  type: redis\n  connection_string: "{redis_connection_string(redis_url or "")}"'
    raise ConfigError(f"online_store: got {kind!r}, expected sqlite or redis")


def render_template(name: str, values: dict) -> str:
    """One file of the packaged repository template with its ``${...}`` placeholders filled from
    :data:`TEMPLATE_NAMES` and ``values``.

    Raises:
        KeyError: if the template uses a placeholder that is not filled (a packaging bug).
    """
    text = (resources.files("build_ensemble") / "templates" / "feature_repo" / name).read_text()
    return Template(text).substitute(TEMPLATE_NAMES, **values)


def feast_schema(table: pd.DataFrame, entity: str) -> str:
    """The ``schema=[...]`` entries of a feature view over ``table``: every column but the
    entity, typed from its values (lists by their first element)."""
    fields = []
    for column in table.columns:
        if column in (entity, C.EVENT_TIMESTAMP, C.CREATED_TIMESTAMP):
            continue
        fields.append(f"Field(name={column!r}, dtype={feast_type(table[column])})")
    return ", ".join(fields)


def feast_type(values: pd.Series) -> str:
    """The Feast type of a column: Int64, Float64, String, Bool, or ``Array(...)`` of one."""
    if values.dtype == object:
        sample = next((v for v in values if v is not None and not (isinstance(v, float) and v != v)), "")
        if isinstance(sample, (list, tuple, np.ndarray)):
            element = next((e for v in values for e in (v if v is not None else []) if e is not None), "")
            return f"Array({feast_type(pd.Series([element]))})"
        return "String"
    if pd.api.types.is_bool_dtype(values.dtype):
        return "Bool"
    if pd.api.types.is_integer_dtype(values.dtype):
        return "Int64"
    if pd.api.types.is_float_dtype(values.dtype):
        return "Float64"
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return "UnixTimestamp"
    return "String"


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

    Raises:
        ValueError: if ``timestamp`` is naive.
    """
    if timestamp.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (Feast assumes naive times are UTC)")
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    values = {
        "online_store": online_store_yaml(online_store, redis_url),
        "user_id_type": "INT64" if pd.api.types.is_integer_dtype(users[C.USER_ID].dtype) else "STRING",
        "item_id_type": "INT64" if pd.api.types.is_integer_dtype(items[C.ITEM_ID].dtype) else "STRING",
        "user_schema": feast_schema(users, C.USER_ID),
        "item_schema": feast_schema(items, C.ITEM_ID),
    }
    for template, name in TEMPLATE_FILES.items():
        (repo / name).write_text(render_template(template, values))
    data_dir = repo / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    for table, source in ((users, C.FEAST_USER_SOURCE), (items, C.FEAST_ITEM_SOURCE)):
        taken = [c for c in (C.EVENT_TIMESTAMP, C.CREATED_TIMESTAMP) if c in table.columns]
        if taken:
            raise DataError(f"the user or item table has a column named {taken[0]}, which the feature store uses "
                            f"for its timestamps; rename it")
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

    feast = feast_module()
    repo = Path(repo_dir).resolve()
    spec = importlib.util.spec_from_file_location(f"_feast_definitions_{abs(hash(repo))}", repo / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (feast.Entity, feast.FeatureView, feast.FeatureService)
    objects = [value for value in vars(module).values() if isinstance(value, kinds)]
    with contextlib.chdir(repo):
        open_store(repo, require_registry=False).apply(objects)


def materialize_repo(repo_dir: str | Path, timestamp: datetime) -> None:
    """Load every row of the parquet sources into the online store.

    An explicit range from just before the rows' event time to now is used, so no row is
    skipped whatever the TTL (``materialize-incremental`` would start at now - ttl), and a later
    ``feast materialize-incremental <now>`` starts where this one ended.

    Raises:
        ConfigError: if the online store cannot be reached.
    """
    repo = Path(repo_dir).resolve()
    with contextlib.chdir(repo):
        store = open_store(repo)
        try:
            # to now (and a millisecond, for rows stamped this very second): never the future
            store.materialize(timestamp - timedelta(seconds=1), datetime.now(timezone.utc) + timedelta(milliseconds=1))
        except Exception as exc:
            if "connection" not in type(exc).__name__.lower():  # e.g. redis.exceptions.ConnectionError
                raise
            raise ConfigError(f"online store ({store.config.online_store.type}) of {repo} is unreachable: {exc}") from None

