import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble import evaluate as ev
from build_ensemble import train as T
from build_ensemble.config import make_config
from build_ensemble.prepared import DataSpec, SplitWriter
from build_ensemble.workflow import ITEM_SUBGRAPH, USER_SUBGRAPH, encode, fit_workflow, load_workflow


def test_item_probabilities_come_from_training_counts():
    probs = T.item_probabilities(np.array([3, 3, 4, 3]), cardinality=6)
    assert probs.tolist() == [0, 0, 0, 0.75, 0.25, 0]
    with pytest.raises(ValueError, match="beyond the cardinality"):
        T.item_probabilities(np.array([7]), cardinality=6)


def _tiny_schema(n_users, n_items):
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name, tags, cardinality):
        return ColumnSchema(name, dtype=np.int64, tags=[*tags, Tags.CATEGORICAL],
                            properties={"domain": {"min": 0, "max": cardinality - 1, "name": name}})

    return Schema([column(C.USER_ID, [Tags.USER_ID, Tags.USER], n_users), column(C.ITEM_ID, [Tags.ITEM_ID, Tags.ITEM], n_items)])


@pytest.mark.parametrize("temperature, weight", [(1.0, 1.0), (0.5, 1.0), (0.5, 1.5)])
def test_logq_corrected_logits_by_hand(temperature, weight):
    """The model's in-batch logits equal s / T - w log q(item), q from training counts."""
    import merlin.models.tf as mm
    from merlin.io import Dataset

    n_items = 12
    batch = pd.DataFrame({C.USER_ID: np.arange(3, 11), C.ITEM_ID: [3, 4, 4, 5, 6, 7, 9, 8], C.CLICK: 1})
    schema = _tiny_schema(16, n_items)
    train_ids = np.array([3, 3, 3, 4, 5, 5, 6, 7, 8, 9, 9, 9, 9, 10])
    probs = T.item_probabilities(train_ids, n_items)
    config = make_config(overrides={"temperature": temperature, "logq_weight": weight, "query_tower": [8, 4]})
    model = T.build_model(schema, config, probs)
    loader = mm.Loader(Dataset(batch, schema=schema, cpu=True), batch_size=8, shuffle=False)
    features, _ = next(iter(loader))
    logits = model(features, training=True).outputs.numpy()

    q = model.query_encoder(features).numpy()
    c = model.candidate_encoder(features).numpy()
    ids = batch[C.ITEM_ID].to_numpy()
    expected = T.logq_corrected_logits(q @ c.T, ids, probs, temperature, weight)
    by_hand = (q * c).sum(axis=1) / temperature - weight * np.log(probs[ids])
    np.testing.assert_allclose(logits[:, 0], by_hand, rtol=1e-4, atol=1e-4)  # positives
    np.testing.assert_allclose(np.diag(expected), by_hand, rtol=1e-5, atol=1e-5)
    negatives = logits[:, 1:]
    same_item = ids[:, None] == ids[None, :]  # in-batch "negatives" that are the positive: masked
    np.testing.assert_allclose(negatives[~same_item], expected[~same_item], rtol=1e-4, atol=1e-4)
    from merlin.models.utils.constants import MIN_FLOAT

    assert (negatives[same_item] < MIN_FLOAT / 2).all()


def test_without_logq_the_logits_are_plain_dot_products():
    import merlin.models.tf as mm
    from merlin.io import Dataset

    batch = pd.DataFrame({C.USER_ID: [3, 4, 5], C.ITEM_ID: [3, 4, 5], C.CLICK: 1})
    schema = _tiny_schema(8, 8)
    model = T.build_model(schema, make_config(overrides={"query_tower": [4]}), None)
    features, _ = next(iter(mm.Loader(Dataset(batch, schema=schema, cpu=True), batch_size=3, shuffle=False)))
    logits = model(features, training=True).outputs.numpy()
    q, c = model.query_encoder(features).numpy(), model.candidate_encoder(features).numpy()
    np.testing.assert_allclose(logits[:, 0], (q * c).sum(axis=1), rtol=1e-4, atol=1e-5)


def _planted(tmp_path):
    """Users of group g click items of group g (plus a little noise), split 80/10/10 and
    transformed; returns the raw tables, the splits, the encoded tables and their schemas."""
    rng = np.random.default_rng(0)
    n_users, n_items, groups = 300, 200, 20
    user_group = np.arange(n_users) % groups
    item_group = np.arange(n_items) % groups
    rows = []
    for user in range(n_users):
        mine = np.flatnonzero(item_group == user_group[user])
        for item in rng.choice(mine, 8, replace=False):
            rows.append((user, item))
        rows.append((user, rng.integers(n_items)))  # a little noise
    df = pd.DataFrame(rows, columns=[C.USER_ID, C.ITEM_ID]).assign(click=1)
    users = pd.DataFrame({C.USER_ID: np.arange(n_users), "region": rng.integers(0, 5, n_users)})
    items = pd.DataFrame({C.ITEM_ID: np.arange(n_items), "shop": rng.integers(0, 7, n_items)})
    writer = SplitWriter(tmp_path, DataSpec(("region",), ("shop",)))
    writer.add_entities(users, items)
    order = rng.permutation(len(df))
    cut = np.split(order, [int(0.8 * len(df)), int(0.9 * len(df))])
    for name, idx in zip(("train", "valid", "test"), cut):
        writer.write(name, df.iloc[np.sort(idx)])
    data = writer.close()
    transformed = fit_workflow(data, tmp_path, tmp_path / ".work")
    workflow = load_workflow(transformed.workflow_dir)
    eu, ei = encode(workflow, USER_SUBGRAPH, users), encode(workflow, ITEM_SUBGRAPH, items)
    us, its = workflow.get_subworkflow(USER_SUBGRAPH).output_schema, workflow.get_subworkflow(ITEM_SUBGRAPH).output_schema
    catalog = ev.Catalog(users[C.USER_ID].to_numpy(), items[C.ITEM_ID].to_numpy())
    splits = [catalog.matrix(data.read_split(s)) for s in ("train", "valid", "test")]
    return transformed, splits, (eu, us), (ei, its)


@pytest.mark.parametrize("negatives", [0, 64])
def test_two_tower_learns_a_planted_signal(tmp_path, negatives):
    """Users of group g click items of group g: recall@10 must be far above random, with
    in-batch negatives alone and with catalog negatives added, and the random baseline must
    stay near k / n_items."""
    transformed, (train, valid, test), (eu, us), (ei, its) = _planted(tmp_path)
    n_users, n_items = len(eu), len(ei)
    config = make_config(overrides={"epochs": 15, "batch_size": 128, "learning_rate": 0.01, "patience": 15,
                                    "negatives": negatives})

    def validate(model):
        scorer = ev.dot_scorer(T.embed(model.query_encoder, eu, us), T.embed(model.candidate_encoder, ei, its))
        return {"valid_ndcg@10": ev.evaluate(scorer, valid, [10], exclude=train)["ndcg@10"]}

    result = T.train_model(config, transformed.train_dir, validate, "valid_ndcg@10", catalog=ei)
    samplers = [type(s).__name__ for s in result.model.last.negative_samplers]
    assert samplers == ["InBatchSamplerV2", "CatalogSampler"][: 1 + bool(negatives)]
    user_vectors = T.embed(result.model.query_encoder, eu, us)
    item_vectors = T.embed(result.model.candidate_encoder, ei, its)
    assert user_vectors.shape == (n_users, 64) and item_vectors.shape == (n_items, 64)
    learned = ev.evaluate(ev.dot_scorer(user_vectors, item_vectors), test, [10], exclude=train)["recall@10"]
    chance = ev.evaluate(ev.random_scorer(n_items), test, [10], exclude=train)["recall@10"]
    assert chance == pytest.approx(10 / n_items, abs=0.04)
    assert learned > 0.5 and learned > 8 * chance, (learned, chance)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_the_weight_window_keeps_the_mean_of_the_last_epochs():
    window = T.WeightWindow(2)
    for value in (1.0, 2.0, 6.0):
        window.add([np.full((2, 2), value, np.float32), np.array([int(value)], np.int64)])
    floats, ints = window.mean()
    np.testing.assert_array_equal(floats, np.full((2, 2), 4.0))  # (2 + 6) / 2: the first epoch dropped
    assert floats.dtype == np.float32 and ints.dtype == np.int64 and ints[0] == 6  # not floats: the last
    single = T.WeightWindow(0)
    single.add([np.zeros(1)])
    single.add([np.ones(1)])
    np.testing.assert_array_equal(single.mean()[0], np.ones(1))


def test_weight_averaging_scores_the_mean_of_the_unaveraged_trajectory(tmp_path):
    """With average_epochs 2, epoch e is validated (and kept) as the mean of epochs e-1 and e of
    the same seed's run without averaging: training itself goes on from each epoch's own weights."""
    transformed, (train, valid, _), (eu, us), (ei, its) = _planted(tmp_path)

    def run(average_epochs):
        seen = []

        def validate(model):
            seen.append(model.get_weights())
            scorer = ev.dot_scorer(T.embed(model.query_encoder, eu, us), T.embed(model.candidate_encoder, ei, its))
            return {"valid_ndcg@10": ev.evaluate(scorer, valid, [10], exclude=train)["ndcg@10"]}

        config = make_config(overrides={"epochs": 3, "batch_size": 128, "learning_rate": 0.01, "patience": 3,
                                        "average_epochs": average_epochs})
        result = T.train_model(config, transformed.train_dir, validate, "valid_ndcg@10")
        return seen, result

    plain, _ = run(1)
    averaged, result = run(2)
    for a, b in zip(averaged[0], plain[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for epoch in (1, 2):
        for a, before, now in zip(averaged[epoch], plain[epoch - 1], plain[epoch]):
            expected = (before + now) / 2 if np.issubdtype(now.dtype, np.floating) else now
            np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-5)
        assert not all(np.allclose(a, b) for a, b in zip(averaged[epoch], plain[epoch]))
    for a, b in zip(result.model.get_weights(), averaged[result.best_epoch - 1]):
        np.testing.assert_array_equal(a, b)
