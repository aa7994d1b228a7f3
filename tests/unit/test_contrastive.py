import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble import train as T
from build_ensemble.config import make_config
from tests.unit.test_train import _tiny_schema


def test_mixture_probabilities_count_both_sources():
    from build_ensemble.contrastive import mixture_probabilities

    clicks = np.array([0, 0, 0.5, 0.5, 0])  # ids 2 and 3 clicked equally; 4 never
    catalog = np.array([2, 3, 4, 4])  # id 4 fills two catalog rows
    probs = mixture_probabilities(clicks, catalog, batch_size=4, negatives=8)
    # expected candidates per step: 4 * clicks + 8 * rows / 4 = [0, 0, 2 + 2, 2 + 2, 0 + 4]
    np.testing.assert_allclose(probs, np.array([0, 0, 4, 4, 4]) / 12)
    np.testing.assert_allclose(mixture_probabilities(clicks, catalog, 4, 0), clicks)
    with pytest.raises(ValueError, match="beyond the cardinality"):
        mixture_probabilities(clicks, np.array([5]), 4, 8)


@pytest.mark.parametrize("temperature, weight", [(1.0, 1.0), (0.5, 1.5)])
def test_catalog_negatives_are_item_tower_logits_corrected_by_the_mixture(temperature, weight):
    """Logits = [positive, in-batch..., catalog draws...], each s / T - w log q_mix(item);
    the catalog columns are the item tower's embeddings of the drawn rows, with gradients."""
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.io import Dataset
    from merlin.models.utils.constants import MIN_FLOAT

    from build_ensemble.contrastive import mixture_probabilities

    n_items, negatives = 12, 6
    batch = pd.DataFrame({C.USER_ID: np.arange(3, 9), C.ITEM_ID: [3, 4, 4, 5, 6, 7], C.CLICK: 1})
    catalog = pd.DataFrame({C.ITEM_ID: np.arange(3, n_items)})
    schema = _tiny_schema(16, n_items)
    clicks = T.item_probabilities(np.array([3, 3, 4, 4, 5, 6, 7, 9]), n_items)
    probs = mixture_probabilities(clicks, catalog[C.ITEM_ID].to_numpy(), len(batch), negatives)
    config = make_config(overrides={"temperature": temperature, "logq_weight": weight, "query_tower": [8, 4],
                                    "negatives": negatives})
    tf.keras.utils.set_random_seed(0)
    model = T.build_model(schema, config, probs, catalog)
    features, _ = next(iter(mm.Loader(Dataset(batch, schema=schema, cpu=True), batch_size=6, shuffle=False)))
    with tf.GradientTape() as tape:
        prediction = model(features, training=True)
        logits = prediction.outputs
        catalog_scores = tf.reduce_sum(tf.maximum(logits[:, 1 + 6:], -1e6))  # accidental hits clipped
    ids = prediction.negative_candidate_ids.numpy().ravel()
    assert logits.shape == (6, 1 + 6 + negatives) and len(ids) == 6 + negatives
    positives = batch[C.ITEM_ID].to_numpy()
    assert ids[:6].tolist() == positives.tolist()  # the in-batch source comes first
    assert set(ids[6:]) <= set(catalog[C.ITEM_ID])  # then the catalog draws

    q = model.query_encoder(features).numpy()
    c = model.candidate_encoder({C.ITEM_ID: tf.constant(ids)}).numpy()
    expected = (q @ c.T) / temperature - weight * np.log(probs[ids])[None, :]
    by_hand_positive = (q * model.candidate_encoder(features).numpy()).sum(axis=1) / temperature
    by_hand_positive -= weight * np.log(probs[positives])
    logits = logits.numpy()
    np.testing.assert_allclose(logits[:, 0], by_hand_positive, rtol=1e-4, atol=1e-4)
    same_item = positives[:, None] == ids[None, :]  # accidental hits, in either source: masked
    np.testing.assert_allclose(logits[:, 1:][~same_item], expected[~same_item], rtol=1e-4, atol=1e-4)
    assert (logits[:, 1:][same_item] < MIN_FLOAT / 2).all()
    # The drawn rows' scores reach the item tower's id embeddings, row by drawn row.
    table = model.candidate_encoder.trainable_weights[0]
    assert table.shape[0] == n_items
    gradient = tf.convert_to_tensor(tape.gradient(catalog_scores, table)).numpy()
    touched = np.flatnonzero(np.abs(gradient).sum(axis=1))
    assert set(touched) == set(ids[6:])


def test_matrix_factorization_ignores_catalog_negatives():
    schema = _tiny_schema(8, 8)
    config = make_config(overrides={"model": "mf", "query_tower": [4], "negatives": 4})
    model = T.build_model(schema, config, None, pd.DataFrame({C.ITEM_ID: np.arange(8)}))
    assert [type(s).__name__ for s in model.last.negative_samplers] == ["InBatchSamplerV2"]


def test_cosine_contrastive_loss_by_hand():
    from merlin.models.utils.constants import MIN_FLOAT

    from build_ensemble.contrastive import CosineContrastiveLoss

    cosines = np.array([[0.9, 0.7, 0.2, MIN_FLOAT], [0.1, 0.6, 0.95, -0.3]], dtype=np.float32)
    targets = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    loss = CosineContrastiveLoss(margin=0.5, negative_weight=2.0, reduction="none")(targets, cosines).numpy()
    # row 0: 1 - 0.9 + 2 * mean(0.2, 0) over its 2 real negatives (the accidental hit leaves)
    # row 1: 1 - 0.1 + 2 * mean(0.1, 0.45, 0)
    np.testing.assert_allclose(loss, [0.1 + 2 * 0.2 / 2, 0.9 + 2 * 0.55 / 3], rtol=1e-6)


def test_ccl_model_scores_cosines_of_the_catalog_draws_without_temperature_or_logq():
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.io import Dataset

    from build_ensemble.errors import ConfigError

    batch = pd.DataFrame({C.USER_ID: [3, 4, 5], C.ITEM_ID: [3, 4, 5], C.CLICK: 1})
    schema = _tiny_schema(8, 8)
    config = make_config(overrides={"query_tower": [4], "loss": "ccl", "normalize": True, "temperature": 0.1,
                                    "negatives": 5})
    catalog = pd.DataFrame({C.ITEM_ID: np.arange(3, 8)})
    model = T.build_model(schema, config, T.item_probabilities(np.array([3, 3, 4, 5]), 8), catalog)
    features, _ = next(iter(mm.Loader(Dataset(batch, schema=schema, cpu=True), batch_size=3, shuffle=False)))
    prediction = model(features, training=True)
    logits, ids = prediction.outputs.numpy(), prediction.negative_candidate_ids.numpy().ravel()
    assert logits.shape == (3, 1 + 5)  # the positive, then the 5 catalog draws alone: no in-batch negatives
    q, c = model.query_encoder(features).numpy(), model.candidate_encoder(features).numpy()
    np.testing.assert_allclose(logits[:, 0], (q * c).sum(axis=1), rtol=1e-4, atol=1e-5)
    drawn = model.candidate_encoder({C.ITEM_ID: tf.constant(ids)}).numpy()
    real = batch[C.ITEM_ID].to_numpy()[:, None] != ids[None, :]
    np.testing.assert_allclose(logits[:, 1:][real], (q @ drawn.T)[real], rtol=1e-4, atol=1e-5)
    assert np.abs(logits[:, 0]).max() <= 1 + 1e-5
    with pytest.raises(ConfigError, match="ccl scores cosines: add --normalize"):
        make_config(overrides={"loss": "ccl", "negatives": 5})
    with pytest.raises(ConfigError, match="add --negatives N"):
        make_config(overrides={"loss": "ccl", "normalize": True})
