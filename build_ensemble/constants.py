"""Names shared between the build, the feature store, the Triton models and the clients."""

# Columns of the raw interaction data.
USER_ID = "user_id"
ITEM_ID = "item_id"
CLICK = "click"
TIMESTAMP = "timestamp"

# Feast.
FEAST_PROJECT = "retrieval"
USER_VIEW = "user_features"
ITEM_VIEW = "item_features"
USER_SERVICE = "user_features_v1"
ITEM_SERVICE = "item_features_v1"
EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created"
FEAST_REGISTRY = "data/registry.db"
FEAST_USER_SOURCE = "data/user_features.parquet"
FEAST_ITEM_SOURCE = "data/item_features.parquet"
FEAST_SQLITE_STORE = "data/online_store.db"

# Triton tensors of the retrieval model.
MODEL_NAME = "retrieval"
INPUT_USER_ID = "user_id"
INPUT_K = "k"  # optional: items per user for this request (default: the build's top_k)
MAX_K = 1000  # the most items a request may ask for per user (fewer if the catalog is smaller)
OUTPUT_ITEM_IDS = "item_ids"
OUTPUT_SCORES = "scores"
OUTPUT_FALLBACK = "fallback"
OUTPUT_PARTIAL = "partial_features"  # a known user with some features missing (defaults used)
ITEM_FEATURE_OUTPUT_PREFIX = "item_"
# Where the served models find the Feast repository (overrides the path relative to the
# model repository that the build records).
FEATURE_REPO_ENV = "BUILD_ENSEMBLE_FEATURE_REPO"

# The layout of an exported model version; `serve` refuses versions of another format (the
# graph pickles operators by module path, so a version exported before a move cannot load).
REPOSITORY_FORMAT = 2

# Files of a build folder.
WORK_DIR = ".work"  # scratch (converted raw data, joined and transformed parts), removed at publish
TRAIN_FILE = "train.parquet"
VALID_FILE = "valid.parquet"
TEST_FILE = "test.parquet"
USER_FEATURES_FILE = "user_features.parquet"
VALIDATION_USER_FEATURES_FILE = "user_features_valid.parquet"
ITEM_FEATURES_FILE = "item_features.parquet"
USER_EMBEDDINGS_FILE = "user_embeddings.parquet"
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
WORKFLOW_DIR = "workflow"
QUERY_TOWER_DIR = "query_tower"
COMPILED_TOWER_DIR = "query_tower_numpy"
ITEM_TOWER_DIR = "item_tower"
INDEX_DIR = "index"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.json"
LOSS_PLOT_FILE = "loss.png"
