import pytest

from build_ensemble.config import BuildConfig, make_config
from build_ensemble.errors import ConfigError


def test_defaults_learn_on_synthetic_and_movielens_get_their_own():
    assert make_config().dataset == "synthetic-aliccp"
    movielens = make_config(overrides={"dataset": "movielens-100k"})
    assert movielens.exclude_seen is True
    assert movielens.epochs > make_config().epochs


def test_matrix_factorization_gets_its_own_movielens_defaults(tmp_path):
    two_tower = make_config(overrides={"dataset": "movielens-100k"})
    mf = make_config(overrides={"dataset": "movielens-100k", "model": "mf"})
    assert (two_tower.normalize, two_tower.temperature, two_tower.logq_weight) == (True, 0.1, 1.5)
    assert (mf.normalize, mf.temperature, mf.logq_weight) == (False, 1.0, 1.0)
    assert mf.patience == two_tower.patience
    explicit = make_config(overrides={"dataset": "movielens-100k", "model": "mf", "temperature": 0.5})
    assert explicit.temperature == 0.5
    (tmp_path / "mf.yaml").write_text("dataset: movielens-100k\nmodel: mf\n")
    assert make_config(tmp_path / "mf.yaml").temperature == 1.0


def test_movielens_temporal_split_adds_recent_items_but_not_for_matrix_factorization(tmp_path):
    base = {"dataset": "movielens-100k"}
    assert make_config(overrides=base).recent_items == 0
    assert make_config(overrides={**base, "split": "temporal"}).recent_items == 5
    assert make_config(overrides={**base, "split": "temporal", "model": "mf"}).recent_items == 0
    assert make_config(overrides={**base, "split": "temporal", "recent_items": 2}).recent_items == 2
    (tmp_path / "t.yaml").write_text("dataset: movielens-100k\nsplit: temporal\n")
    assert make_config(tmp_path / "t.yaml").recent_items == 5


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("dataset: movielens-100k\nepochs: 7\nlearning-rate: 0.01\n")
    config = make_config(path, {"epochs": 2, "batch_size": None})
    assert (config.dataset, config.epochs, config.learning_rate) == ("movielens-100k", 2, 0.01)
    assert config.batch_size == 1024  # None means "not given on the command line"


def test_unknown_option_names_it(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("epocs: 3\n")
    with pytest.raises(ConfigError, match="unknown option 'epocs'"):
        make_config(path)


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(bad)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "imagenet", "dataset: got 'imagenet'"),
        ("epochs", 0, "epochs: got 0, expected a positive integer"),
        ("learning_rate", -1.0, "learning_rate"),
        ("l2_reg", -0.1, "l2_reg"),
        ("temperature", 0.0, "temperature"),
        ("logq_weight", 0.0, "logq_weight: got 0.0, expected a positive number"),
        ("recent_items", -1, "recent_items: got -1, expected 0 or a positive integer"),
        ("query_tower", [128, 0], "query_tower"),
        ("ks", [], "ks"),
        ("index", "annoy", "index: got 'annoy'"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides={field: value})


def test_item_tower_must_end_like_query_tower():
    with pytest.raises(ConfigError, match="must equal the query tower"):
        BuildConfig(item_tower=[128, 32])


def test_aliccp_needs_both_globs():
    with pytest.raises(ConfigError, match="--train-glob and --valid-glob"):
        make_config(overrides={"dataset": "aliccp", "train_glob": "x/*.parquet"})


@pytest.mark.parametrize(
    "field, value",
    [("dropout", 1.0), ("dropout", -0.1), ("mlp_l2", -1.0), ("id_embedding_dim", 0), ("model", "bpr")],
)
def test_model_options_are_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        make_config(overrides={field: value})


@pytest.mark.parametrize(
    "values, message",
    [
        ("query_tower: 128\n", r"query_tower: got 128 \(int\), expected a list"),
        ("learning_rate: fast\n", r"learning_rate: got 'fast' \(str\), expected a float"),
        ("epochs: 2.5\n", r"epochs: got 2.5 \(float\), expected an int"),
        ("logq: 1\n", r"logq: got 1 \(int\), expected a bool"),
        ("ks: [10, ten]\n", r"ks: got \[10, 'ten'\], expected a list of integers"),
    ],
)
def test_yaml_values_are_type_checked_with_the_option_named(tmp_path, values, message):
    path = tmp_path / "build.yaml"
    path.write_text(values)
    with pytest.raises(ConfigError, match=message):
        make_config(path)
