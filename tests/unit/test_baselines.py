import numpy as np
import pytest
import scipy.sparse as sp

from build_ensemble import baselines as B


def _interactions():
    rng = np.random.default_rng(0)
    return sp.csr_matrix((rng.random((40, 9)) < 0.3).astype(np.float32))


def test_ease_is_the_constrained_ridge_solution():
    """The closed form has a zero diagonal and zero gradient of ‖X - XB‖² + λ‖B‖² off it."""
    X, l2 = _interactions(), 5.0
    weights = B.ease_weights(X, l2)
    assert np.allclose(np.diag(weights), 0)
    dense = X.toarray().astype(np.float64)
    gradient = -2 * dense.T @ (dense - dense @ weights) + 2 * l2 * weights
    off_diagonal = ~np.eye(9, dtype=bool)
    np.testing.assert_allclose(gradient[off_diagonal], 0, atol=1e-8)
    with pytest.raises(ValueError, match="l2 must be positive"):
        B.ease_weights(X, 0)


def test_item_knn_keeps_the_nearest_cosine_neighbours():
    X = _interactions()
    weights = B.item_knn_weights(X, neighbours=3)
    dense = X.toarray()
    cosine = dense.T @ dense / np.outer(np.linalg.norm(dense, axis=0), np.linalg.norm(dense, axis=0))
    np.fill_diagonal(cosine, 0)
    for item in range(9):
        kept = np.flatnonzero(weights[:, item])
        assert len(kept) == 3 and np.allclose(weights[kept, item], cosine[kept, item])
        assert cosine[kept, item].min() >= np.delete(cosine[:, item], kept).max()


def test_history_scorer_sums_the_weights_of_the_users_items():
    history = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32))
    weights = np.arange(9, dtype=np.float64).reshape(3, 3)
    np.testing.assert_allclose(B.history_scorer(history, weights)(np.array([1, 0])), [weights[1], weights[0] + weights[2]])
