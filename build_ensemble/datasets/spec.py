"""The dataset spec: a short YAML file declaring the user's interactions, user and item tables and features.

Example (every key but ``interactions``, ``user_id`` and ``item_id`` is optional)::

    interactions: data/events/*.parquet   # a glob; parquet or csv, chosen by extension
    users: data/users.parquet             # one row per user (else user features come from the interactions)
    items: data/items.parquet             # one row per item, the whole catalog (else from the interactions)
    user_id: uid                          # integer or string ids
    item_id: sku
    timestamp: ts                         # integer seconds or a datetime column
    label: rating                         # numeric; a row is positive when label >= label_threshold
    label_threshold: 4
    user_features: {gender: categorical, age: continuous, interests: list}
    item_features:
      category: {kind: categorical, freq_threshold: 5}
      price: {kind: continuous, log: true}
      tags: list

Relative paths are taken from the spec file's folder. A feature is ``name: kind`` or
``name: {kind: ..., option: ...}``; options: ``freq_threshold`` and ``max_size`` (categorical and
list: rarer or surplus values share the out-of-vocabulary code), ``log`` and ``fill``
(continuous: ``log1p`` before normalizing; missing values take the training median, or
``fill: <number>``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from build_ensemble.config import read_mapping
from build_ensemble.errors import ConfigError

KINDS = ("categorical", "continuous", "list")
# Column names the build itself writes (ids, the positive flag, time, Feast's timestamps, recent items).
RESERVED = ("user_id", "item_id", "click", "timestamp", "event_timestamp", "created")
KEYS = ("interactions", "validation", "users", "items", "user_id", "item_id", "timestamp", "label",
        "label_threshold", "user_features", "item_features")
REQUIRED = ("interactions", "user_id", "item_id")
OPTIONS = {"categorical": ("freq_threshold", "max_size"), "list": ("freq_threshold", "max_size"),
           "continuous": ("log", "fill")}


@dataclass(frozen=True)
class Feature:
    """One declared feature.

    Attributes:
        name: column name.
        kind: ``categorical``, ``continuous`` or ``list``.
        freq_threshold: categorical / list: values seen fewer times in training share the OOV code (0: none).
        max_size: categorical / list: keep at most this many most frequent values (0: all).
        log: continuous: ``log(1 + x)`` before normalizing.
        fill: continuous: the value for a missing one; None: the training median.
    """

    name: str
    kind: str
    freq_threshold: int = 0
    max_size: int = 0
    log: bool = False
    fill: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed, checked dataset spec (see the module docstring); paths are absolute.

    Attributes:
        interactions: glob of the interaction files.
        validation: optional glob of interaction files split half/half into valid and test;
            without it each user's interactions are split (``--split random`` or ``temporal``).
        users: optional user table file.
        items: optional item table file (the whole catalog).
        user_id, item_id: id columns.
        timestamp: optional time column.
        label, label_threshold: optional positive-interaction rule (``label >= label_threshold``).
        user_features, item_features: the declared features.
        source: the spec file, for messages.
    """

    interactions: str
    user_id: str
    item_id: str
    validation: str | None = None
    users: str | None = None
    items: str | None = None
    timestamp: str | None = None
    label: str | None = None
    label_threshold: float | None = None
    user_features: tuple = ()
    item_features: tuple = ()
    source: str = "dataset spec"

    @property
    def features(self) -> tuple:
        return self.user_features + self.item_features


def load_spec(path: str | Path, overrides: dict | None = None) -> DatasetSpec:
    """Read and check a dataset spec file.

    Args:
        path: the YAML file.
        overrides: values replacing the file's (built-in specs fill their paths this way).

    Raises:
        ConfigError: naming the file, the key and the problem.
    """
    path = Path(path).expanduser()
    values = read_mapping(path, "dataset spec", "key: value")
    return parse_spec({**values, **(overrides or {})}, path)


def load_builtin(name: str, **paths) -> DatasetSpec:
    """A built-in data set's spec (``specs/<name>.yaml`` of this package), its file keys
    (``interactions``, ``validation``, ``users``, ``items``) set to ``paths`` (relative ones are
    taken from the current folder, as on the command line)."""
    absolute = {k: str(Path(v).expanduser().resolve()) for k, v in paths.items() if v is not None}
    with resources.as_file(resources.files("build_ensemble.datasets") / "specs" / f"{name}.yaml") as path:
        return load_spec(path, absolute)


def parse_spec(values: dict, path: Path) -> DatasetSpec:
    """Check the keys and values of a spec read from ``path`` (see :func:`load_spec`)."""
    where = f"dataset spec {path}"
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    for key in REQUIRED:
        if not values.get(key):
            raise ConfigError(f"{where}: {key} is required")
    for key in ("interactions", "validation", "users", "items", "user_id", "item_id", "timestamp", "label"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ConfigError(f"{where}: {key} must be a string, got {values[key]!r}")
    threshold = values.get("label_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Number)):
        raise ConfigError(f"{where}: label_threshold must be a number, got {threshold!r}")
    if threshold is not None and not values.get("label"):
        raise ConfigError(f"{where}: label_threshold needs a label column")
    users = _features(values.get("user_features"), "user_features", where)
    items = _features(values.get("item_features"), "item_features", where)
    names = [f.name for f in users + items]
    reserved = {values["user_id"], values["item_id"], values.get("timestamp"), values.get("label")}
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}: feature {name!r} is declared twice")
        if name in reserved:
            raise ConfigError(f"{where}: {name!r} is an id, timestamp or label column, not a feature")
        if name in RESERVED or name.startswith("recent_item_"):
            raise ConfigError(f"{where}: feature name {name!r} is taken by the build "
                              f"({', '.join(RESERVED)}, recent_item_N); rename the column")
    root = path.parent

    def absolute(value):
        return None if value is None else str(root / Path(value).expanduser())

    return DatasetSpec(
        interactions=absolute(values["interactions"]), validation=absolute(values.get("validation")),
        users=absolute(values.get("users")), items=absolute(values.get("items")),
        user_id=values["user_id"], item_id=values["item_id"], timestamp=values.get("timestamp"),
        label=values.get("label"), label_threshold=1 if values.get("label") and threshold is None else threshold,
        user_features=users, item_features=items, source=str(path),
    )


def _features(values: Any, key: str, where: str) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {key} must be a mapping of name: kind, got {values!r}")
    return tuple(_feature(str(name), declared, f"{where}: {key}.{name}") for name, declared in values.items())


def _feature(name: str, declared: Any, where: str) -> Feature:
    options = dict(declared) if isinstance(declared, dict) else {"kind": declared}
    kind = options.pop("kind", None)
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} for a {kind} feature; "
                          f"options: {', '.join(OPTIONS[kind])}")
    for option in ("freq_threshold", "max_size"):
        value = options.get(option, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {option} must be a non-negative integer, got {value!r}")
    if not isinstance(options.get("log", False), bool):
        raise ConfigError(f"{where}: log must be true or false, got {options['log']!r}")
    fill = options.get("fill")
    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, numbers.Number)):
        raise ConfigError(f"{where}: fill must be a number (default: the training median), got {fill!r}")
    return Feature(name, kind, **options)

