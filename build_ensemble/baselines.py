"""Item-item baselines the Two-Tower is measured against: EASE and item-kNN (NumPy/SciPy, not served).

Both score a user by the items in their history, ``scores = history @ B`` with an
``[items, items]`` weight matrix ``B`` whose diagonal is zero (an item does not recommend itself).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

Scorer = Callable[[np.ndarray], np.ndarray]


def ease_weights(train: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE (Steck, 2019): the closed-form item-item ridge regression with a zero diagonal.

    ``P = (XᵀX + λI)⁻¹``, ``B = I - P diag(1 / diag(P))``, which minimises
    ``‖X - XB‖² + λ‖B‖²`` subject to ``diag(B) = 0``.

    Args:
        train: ``[users, items]`` 0/1 interactions.
        l2: λ > 0.

    Returns:
        ``[items, items]`` float64 weights.
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    gram = (train.T @ train).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def item_knn_weights(train: sp.csr_matrix, neighbours: int) -> np.ndarray:
    """Item-kNN: cosine similarity of item columns, each item keeping its ``neighbours`` most similar.

    Column ``j`` of the result holds the similarities of item ``j`` to its nearest
    neighbours, so ``history @ B`` sums, for each candidate, its similarity to the user's items.

    Args:
        train: ``[users, items]`` 0/1 interactions.
        neighbours: neighbours kept per item (> 0).

    Returns:
        ``[items, items]`` float64 weights.
    """
    if neighbours <= 0:
        raise ValueError(f"neighbours must be positive, got {neighbours}")
    gram = (train.T @ train).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(gram))
    norms[norms == 0] = 1.0
    similarity = gram / norms[:, None] / norms[None, :]
    similarity[np.diag_indices_from(similarity)] = 0.0
    keep = min(neighbours, similarity.shape[0])
    weak = np.argpartition(-similarity, keep - 1, axis=0)[keep:]
    np.put_along_axis(similarity, weak, 0.0, axis=0)
    return similarity


def history_scorer(history: sp.csr_matrix, weights: np.ndarray) -> Scorer:
    """Scores ``history[rows] @ weights`` for the evaluation code's ``top_k``."""
    return lambda rows: np.asarray(history[rows] @ weights, dtype=np.float32)
