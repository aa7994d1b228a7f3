"""What the Two-Tower's contrastive loss compares each positive against: catalog negatives run
through the item tower in the same step (mixed negative sampling) and their logQ correction.

Imported only when a model is built: it needs TensorFlow and Merlin Models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf
from merlin.models.tf.outputs.sampling.base import EMBEDDING_KEY, Candidate, CandidateSampler
from merlin.schema import Tags


def mixture_probabilities(in_batch: np.ndarray, catalog_ids: np.ndarray, batch_size: int, negatives: int) -> np.ndarray:
    """Share of each encoded item id among one step's candidates under mixed negative sampling.

    A step's candidates are the batch's ``batch_size`` positives, drawn from the click
    distribution ``in_batch``, and ``negatives`` rows drawn uniformly from the catalog table. An
    item is therefore a candidate ``B p(i) + N u(i)`` times per step on average, whichever source
    drew it, and the logQ correction of every candidate is the log of that mixture: correcting
    in-batch candidates by ``p`` and catalog ones by ``u`` would treat an item that both sources
    draw as if only one could.

    Args:
        in_batch: ``[cardinality]`` click probability of each encoded item id (``item_probabilities``).
        catalog_ids: ``[rows]`` encoded item id of each catalog row the sampler draws from.
        batch_size: positives per step.
        negatives: catalog rows drawn per step (0: in-batch only, the result is ``in_batch``).

    Returns:
        ``[cardinality]`` float64 probabilities summing to 1.
    """
    catalog_ids = np.asarray(catalog_ids, dtype=np.int64)
    if len(catalog_ids) and catalog_ids.max() >= len(in_batch):
        raise ValueError(f"catalog item ids reach {catalog_ids.max()}, beyond the cardinality {len(in_batch)}")
    uniform = np.bincount(catalog_ids, minlength=len(in_batch)) / max(len(catalog_ids), 1)
    mixture = batch_size * np.asarray(in_batch, dtype=np.float64) + negatives * uniform
    return mixture / mixture.sum()


class CatalogSampler(CandidateSampler):
    """Draws ``num_samples`` rows of the encoded item table uniformly (with replacement) each step
    and embeds them with the item tower, so they are negatives with gradients like in-batch ones.

    Args:
        items: encoded item features, one row per catalog item (``workflow.encode`` output).
        schema: the item tower's input schema (which columns, which are lists).
        num_samples: rows drawn per step.
        encoder: the item tower that embeds the drawn rows (the model's ``candidate_encoder``).
    """

    def __init__(self, items: pd.DataFrame, schema, num_samples: int, encoder, **kwargs):
        super().__init__(max_num_samples=num_samples, **kwargs)
        self.encoder = encoder
        self.id_name = schema.select_by_tag(Tags.ITEM_ID).first.name
        self.num_rows = len(items)
        self.scalars, self.lists = {}, {}
        for column in schema:
            values = items[column.name]
            if column.is_list:
                lengths = values.map(len).to_numpy()
                flat = np.concatenate([np.asarray(v) for v in values]) if lengths.sum() else np.zeros(0, np.int64)
                self.lists[column.name] = tf.RaggedTensor.from_row_lengths(tf.constant(flat), tf.constant(lengths, tf.int64))
            else:
                self.scalars[column.name] = tf.constant(values.to_numpy())

    def add(self, items: Candidate) -> None:
        """Uniform sampling keeps nothing of the batch."""

    def sample(self) -> dict:
        """Features of ``num_samples`` uniformly drawn catalog rows, in the loader's format."""
        rows = tf.random.uniform([self.max_num_samples], maxval=self.num_rows, dtype=tf.int64)
        # Unknown batch size, as the loader's features have: list features gathered from the
        # table have no static one, and the tower refuses to concatenate mismatched shapes.
        rows = tf.compat.v1.placeholder_with_default(rows, shape=[None])
        features = {name: tf.gather(values, rows) for name, values in self.scalars.items()}
        for name, values in self.lists.items():
            drawn = tf.gather(values, rows)
            features[f"{name}__values"], features[f"{name}__offsets"] = drawn.flat_values, drawn.row_splits
        return features

    def call(self, items: Candidate, features=None, targets=None, training=False, testing=False) -> Candidate:
        drawn = self.sample()
        embeddings = self.encoder(drawn, training=training)
        ids = tf.cast(drawn[self.id_name], items.id.dtype)
        if items.id.shape.rank == 2:
            ids = tf.expand_dims(ids, -1)
        return Candidate(id=ids, metadata={EMBEDDING_KEY: embeddings})


class CosineContrastiveLoss(tf.keras.losses.Loss):
    """SimpleX's cosine contrastive loss (Mao et al., 2021) over ``[positive, negatives...]`` cosines.

    Per query: ``(1 - cos(u, i+)) + weight * mean_j max(0, cos(u, j) - margin)`` over its
    negatives. Accidental hits (a negative that is the positive item, which the contrastive
    output scores at about -3.4e38) count as zero and leave the mean.

    Args:
        margin: cosines of negatives below it cost nothing.
        negative_weight: weight of the negative term against the positive one.
    """

    def __init__(self, margin: float, negative_weight: float, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.negative_weight = margin, negative_weight

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        positive = tf.reduce_sum(y_true * y_pred, axis=-1)
        real = tf.cast(y_pred > -2.0, y_pred.dtype) * (1.0 - y_true)  # cosines are >= -1
        hinge = tf.nn.relu(y_pred - self.margin) * real
        negative = tf.reduce_sum(hinge, axis=-1) / tf.maximum(tf.reduce_sum(real, axis=-1), 1.0)
        return (1.0 - positive) + self.negative_weight * negative

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "negative_weight": self.negative_weight}
