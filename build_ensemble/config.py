"""Build configuration: one typed dataclass, set by defaults, a YAML file and CLI flags.

Precedence, lowest first: field defaults, the data set's defaults (``DATASET_DEFAULTS``, then
``SPLIT_DEFAULTS`` for the data set and split, ``MODEL_DEFAULTS`` for the data set and model),
the YAML file, CLI flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from build_ensemble import constants as C
from build_ensemble.errors import ConfigError

# Each has a module in `datasets` (SOURCES); "spec" is the user's own files (--dataset-spec).
DATASETS = ("synthetic-aliccp", "aliccp", "aliccp-raw", "movielens-100k", "spec")
SPLITS = ("random", "temporal")
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
TOWER_BACKENDS = ("python", "tensorflow")
ONLINE_STORES = ("sqlite", "redis")
OPTIMIZERS = ("adam", "adagrad", "sgd")
MODELS = ("two-tower", "mf")
LOSSES = ("softmax", "ccl")
# What `build-ensemble export` may change without retraining (the rest of a build's options is fixed).
EXPORT_OPTIONS = ("tower_backend", "with_item_features", "index", "top_k", "instances", "model_version")


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text also documents the CLI flag."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class BuildConfig:
    """Every option of `build-ensemble build`; the CLI flags are generated from these fields."""

    # Data.
    dataset: str = _opt("synthetic-aliccp", "data source (spec: your own files, see --dataset-spec)", choices=DATASETS)
    dataset_spec: str | None = _opt(
        None, "YAML file declaring your interactions, users, items and features (README: Your own data); "
        "sets --dataset spec"
    )
    data_dir: str | None = _opt(None, "aliccp-raw: folder of Ali-CCP as downloaded (sample_skeleton_*.csv, common_features_*.csv)")
    rows: int = _opt(100_000, "synthetic-aliccp: number of interaction rows to generate")
    items: int | None = _opt(
        None, "synthetic-aliccp: catalog size; items are drawn with a popularity skew (default: the generator's own)"
    )
    train_glob: str | None = _opt(None, "aliccp: glob of the training parquet files (raw Ali-CCP format)")
    valid_glob: str | None = _opt(
        None, "aliccp: glob of the validation parquet files; split half/half into valid and test"
    )
    split: str = _opt(
        "random", "movielens-100k and spec data without a validation glob: per-user 80/10/10 split, random or by time",
        choices=SPLITS,
    )
    recent_items: int = _opt(
        0, "query features recent_item_1..N: the user's N latest items, point in time (training rows see the "
        "items before them); needs interaction timestamps (0: none)"
    )
    seed: int = _opt(0, "seed of the data split, the synthetic generator and model initialisation")
    cache_dir: str = _opt("~/.cache/build-ensemble", "where downloaded data sets are kept")
    workers: int = _opt(0, "run the NVTabular workflow on a local Dask cluster of N worker processes (0: in this process)")
    dask_scheduler: str | None = _opt(None, "run the workflow on an existing Dask cluster (tcp://host:8786) instead")
    worker_memory: str = _opt("auto", "memory limit per local Dask worker (e.g. 2GB); Dask spills to disk beyond it")
    part_size: str = _opt("128MB", "in-memory size of one NVTabular partition; smaller ones need less worker memory")

    # Outputs.
    out: str = _opt("artifacts", "build folder for the exported artifacts")
    feature_repo: str = _opt("feature_repo", "Feast repository the build writes and materializes")
    online_store: str = _opt(
        "sqlite", "Feast online store: sqlite (a file in the feature repo) or redis (shared by many servers)",
        choices=ONLINE_STORES,
    )
    redis_url: str = _opt("redis://127.0.0.1:6379/0", "redis: redis://[:password@]host:port[/db] of the online store")
    repository: str = _opt("model_repository", "Triton model repository the build exports")

    # Model.
    model: str = _opt(
        "two-tower", "two-tower (features + MLP towers) or mf (id embeddings only, the matrix-factorization baseline)",
        choices=MODELS,
    )
    query_tower: list = _opt([128, 64], "query tower MLP layer sizes (last layer has no activation)")
    item_tower: list | None = _opt(None, "item tower MLP layer sizes (default: same as query tower)")
    id_embedding_dim: int | None = _opt(
        None, "embedding size of user_id and item_id (default: inferred from cardinality, like the other features)"
    )
    dropout: float = _opt(0.0, "dropout rate in the tower MLPs")
    mlp_l2: float = _opt(0.0, "L2 penalty on the tower MLPs' weights")
    normalize: bool = _opt(False, "L2-normalize the tower outputs (cosine scores; pair with a temperature < 1)")
    optimizer: str = _opt("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = _opt(3e-3, "learning rate")
    epochs: int = _opt(5, "maximum training epochs (early stopping on validation NDCG picks the best)")
    patience: int = _opt(3, "epochs without validation improvement before stopping")
    average_epochs: int = _opt(
        0, "weight averaging: validate and keep the mean of the last N epochs' weights, not the last epoch's "
        "(0 or 1: off)"
    )
    batch_size: int = _opt(1024, "training batch size (also the number of in-batch negatives)")
    negatives: int = _opt(
        0, "Two-Tower: catalog items drawn uniformly per step and run through the item tower as more negatives "
        "(mixed negative sampling; logQ then corrects by the mixture of both sources; 0: in-batch only)"
    )
    l2_reg: float = _opt(0.0, "L2 penalty on the embeddings looked up in each batch")
    logq: bool = _opt(True, "logQ-correct in-batch negatives by item popularity")
    logq_weight: float = _opt(
        1.0, "strength w of the logQ correction, logits - w log q: 1 removes the sampling bias exactly, "
        "> 1 also pushes toward rarely clicked items"
    )
    temperature: float = _opt(1.0, "logits temperature of the contrastive loss")
    loss: str = _opt(
        "softmax", "Two-Tower loss: softmax (cross-entropy over the negatives, logQ-corrected) or ccl (SimpleX's "
        "cosine contrastive loss against the --negatives uniform catalog draws alone; needs --normalize; temperature "
        "and logQ do not apply)", choices=LOSSES,
    )
    ccl_margin: float = _opt(0.5, "ccl: negatives whose cosine is below this margin cost nothing")
    ccl_negative_weight: float = _opt(1.0, "ccl: weight of the mean negative term against the positive one")

    # Evaluation.
    ks: list = _opt([10], "cut-offs k of Recall@k and NDCG@k")
    exclude_seen: bool = _opt(False, "mask items the user interacted with in training (and validation, at test)")
    eval_users: int = _opt(5000, "at most this many users score the validation set after each epoch")

    # Index and serving.
    index: str = _opt("auto", "FAISS index: exact flat, IVF, HNSW, IVF-PQ fast scan with exact re-rank, or auto: the fastest that reaches recall@k 0.95, measured at build (exact unless an index saves 0.1 ms per query)", choices=INDEX_KINDS)
    top_k: int = _opt(10, "number of items the served ensemble returns per user")
    tower_backend: str = _opt(
        "python", "where Triton runs the query tower: python (any server) or tensorflow (GPU images)",
        choices=TOWER_BACKENDS,
    )
    with_item_features: bool = _opt(False, "also return the item features of each candidate (from Feast)")
    instances: int = _opt(
        1, "Python-backend instances of the retrieval model: processes that run batches side by side and share "
        "the index's memory-mapped pages (README: Batching and instances)"
    )
    model_version: int = _opt(
        1, "Triton model version to write; the repository's other versions are kept (0: one above the highest)"
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the field, the value received and what is allowed.
        """
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: got {value!r}, expected one of {', '.join(choices)}")
        positive = ("rows", "epochs", "batch_size", "top_k", "eval_users", "patience", "instances")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected a positive integer")
        if not isinstance(self.model_version, int) or self.model_version < 0:
            raise ConfigError(f"model_version: got {self.model_version!r}, expected 0 (next) or a positive integer")
        for name in ("workers", "recent_items", "negatives", "average_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected 0 or a positive integer")
        if self.online_store == "redis":
            redis_connection_string(self.redis_url)
        if self.top_k > C.MAX_K:
            raise ConfigError(f"top_k: got {self.top_k}, expected at most {C.MAX_K}")
        if self.items is not None and (not isinstance(self.items, int) or self.items <= 0):
            raise ConfigError(f"items: got {self.items!r}, expected a positive integer")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: got {self.learning_rate!r}, expected a positive number")
        if self.id_embedding_dim is not None and (not isinstance(self.id_embedding_dim, int) or self.id_embedding_dim <= 0):
            raise ConfigError(f"id_embedding_dim: got {self.id_embedding_dim!r}, expected a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: got {self.dropout!r}, expected 0 <= dropout < 1")
        for name in ("l2_reg", "mlp_l2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: got {getattr(self, name)!r}, expected >= 0")
        if self.logq_weight <= 0:
            raise ConfigError(f"logq_weight: got {self.logq_weight!r}, expected a positive number")
        if self.loss == "ccl" and self.model != "mf" and not self.normalize:
            raise ConfigError("loss: ccl scores cosines: add --normalize")
        if self.loss == "ccl" and self.model != "mf" and not self.negatives:
            raise ConfigError("loss: ccl compares against uniform catalog draws: add --negatives N (e.g. 1000)")
        if not -1 <= self.ccl_margin <= 1:
            raise ConfigError(f"ccl_margin: got {self.ccl_margin!r}, expected a cosine between -1 and 1")
        if self.ccl_negative_weight <= 0:
            raise ConfigError(f"ccl_negative_weight: got {self.ccl_negative_weight!r}, expected a positive number")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: got {self.temperature!r}, expected a positive number")
        for name in ("query_tower", "item_tower", "ks"):
            value = getattr(self, name)
            if value is None and name == "item_tower":
                continue
            if not value or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(f"{name}: got {value!r}, expected a list of positive integers")
        if self.item_tower and self.item_tower[-1] != self.query_tower[-1]:
            raise ConfigError(
                f"item_tower: its last layer ({self.item_tower[-1]}) must equal the query tower's "
                f"({self.query_tower[-1]}): the score is their dot product"
            )
        if self.dataset == "aliccp" and not (self.train_glob and self.valid_glob):
            raise ConfigError("dataset aliccp needs --train-glob and --valid-glob (parquet files)")
        if self.dataset == "aliccp-raw" and not self.data_dir:
            raise ConfigError("dataset aliccp-raw needs --data-dir (the folder of the downloaded Ali-CCP csv files)")
        if (self.dataset == "spec") != bool(self.dataset_spec):
            raise ConfigError("dataset_spec: give --dataset-spec FILE for your own data (it sets --dataset spec); "
                              f"got dataset {self.dataset!r} and dataset_spec {self.dataset_spec!r}")

    @property
    def item_tower_dims(self) -> list:
        """Item tower layer sizes, defaulting to the query tower's."""
        return list(self.item_tower or self.query_tower)

    def to_dict(self) -> dict:
        """The configuration as plain data (for manifests)."""
        return dataclasses.asdict(self)


TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,)}


def _check_type(f, value) -> None:
    """Refuse a value of the wrong type for a field (as a YAML file may hold), naming the option.

    Raises:
        ConfigError: e.g. ``query_tower: got 128 (int), expected a list``.
    """
    kinds = str(f.type).split(" | ")  # annotations are strings: "int | None", "list", ...
    if value is None and "None" in kinds:
        return
    expected = TYPES[kinds[0]]
    wrong_bool = isinstance(value, bool) and bool not in expected
    if wrong_bool or not isinstance(value, expected):
        article = "an" if kinds[0][0] in "aeiou" else "a"
        raise ConfigError(f"{f.name}: got {value!r} ({type(value).__name__}), expected {article} {kinds[0]}")
    if kinds[0] == "list" and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{f.name}: got {value!r}, expected a list of integers")


# Settings that differ by data set. MovieLens-100K's were chosen on validation NDCG@10 (random
# split, seeds 0 and 1; see README, "Retrieval quality"); synthetic Ali-CCP has no signal to tune on.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic-aliccp": {"epochs": 3},
    "aliccp": {},
    "aliccp-raw": {},
    "spec": {},
    "movielens-100k": {
        "exclude_seen": True,
        "epochs": 40,
        "patience": 8,
        "learning_rate": 3e-3,
        "batch_size": 1024,
        "l2_reg": 5e-5,
        "query_tower": [256, 64],
        "dropout": 0.3,
        "normalize": True,
        "temperature": 0.1,
        "logq_weight": 1.5,
        "average_epochs": 5,
    },
}
# Settings that differ by data set and split. On MovieLens-100K's temporal split each user's
# latest items predict the next ones (validation NDCG@10 0.128 -> 0.179 with the 5 latest); on
# the random split the held-out items are scattered over the user's timeline and the same
# feature lowered it (0.268 -> 0.140): docs/quality.md.
SPLIT_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("movielens-100k", "temporal"): {"recent_items": 5},
}
# Matrix factorization has no tower to normalize: plain dot products at temperature 1 (its
# test recall@10 on MovieLens-100K, seed 0, fell from 0.282 to 0.242 at the Two-Tower's 0.1),
# with the exact logQ correction it was tuned with, and no weight averaging (validation NDCG@10
# over seeds 0-4: 0.2688 averaged against 0.2690 without).
MODEL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("movielens-100k", "mf"): {"normalize": False, "temperature": 1.0, "logq_weight": 1.0, "recent_items": 0,
                               "average_epochs": 0},
}


def _normalise_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(BuildConfig)}
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{source}: unknown option {key!r}; known options: {', '.join(sorted(names))}")
        out[name] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file.

    Raises:
        ConfigError: if the file is missing, is not YAML, or names an unknown option.
    """
    path = Path(path)
    return _normalise_keys(read_mapping(path, "config file", "option: value"), str(path))


def read_mapping(path: Path, what: str, form: str) -> dict:
    """A YAML file holding a mapping (an empty file is an empty one).

    Raises:
        ConfigError: naming ``what`` and the file when it is missing, not YAML, or not a mapping.
    """
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of {form}, got {type(values).__name__}")
    return values


def make_config(
    yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> BuildConfig:
    """Merge defaults, data-set defaults, a YAML file and explicit overrides.

    Args:
        yaml_path: optional YAML file of ``option: value``.
        overrides: values set explicitly (CLI flags); ``None`` values are ignored.

    Raises:
        ConfigError: for unknown options or invalid values.
    """
    from_file = read_yaml(yaml_path) if yaml_path else {}
    explicit = _normalise_keys({k: v for k, v in (overrides or {}).items() if v is not None}, "option")
    spec = explicit.get("dataset_spec", from_file.get("dataset_spec"))
    dataset = explicit.get("dataset", from_file.get("dataset", "spec" if spec else BuildConfig.dataset))
    if dataset not in DATASETS:
        raise ConfigError(f"dataset: got {dataset!r}, expected one of {', '.join(DATASETS)}")
    model = explicit.get("model", from_file.get("model", BuildConfig.model))
    split = explicit.get("split", from_file.get("split", BuildConfig.split))
    values = {
        **({"dataset": dataset} if spec else {}),
        **DATASET_DEFAULTS[dataset],
        **SPLIT_DEFAULTS.get((dataset, split), {}),
        **MODEL_DEFAULTS.get((dataset, model), {}),
        **from_file,
        **explicit,
    }
    try:
        return BuildConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


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
