import numpy as np
import pytest

from build_ensemble.serving import RequestError, check_k, check_user_ids


def test_good_ids_are_flattened():
    assert check_user_ids(np.array([[3], [0], [2**62]], dtype=np.int64)).tolist() == [3, 0, 2**62]


@pytest.mark.parametrize(
    "values, message",
    [
        (None, "input 'user_id' is missing"),
        (np.array([[1.0]]), "must be INT64, got float64"),
        (np.array([[1]], dtype=np.int32), "must be INT64, got int32"),
        (np.array([1, 2], dtype=np.int64), r"shape \[batch, 1\], got \[2\]"),
        (np.array([[1, 2]], dtype=np.int64), r"shape \[batch, 1\], got \[1, 2\]"),
        (np.zeros((0, 1), dtype=np.int64), "is empty"),
        (np.array([[4], [-7]], dtype=np.int64), r"negative id \(-7\)"),
    ],
)
def test_bad_requests_name_the_input_and_the_problem(values, message):
    with pytest.raises(RequestError, match=message):
        check_user_ids(values)


def test_k_defaults_to_the_build_and_is_one_value_per_request():
    assert check_k(None, 3, default=10, limit=1000) == 10
    assert check_k(np.full((3, 1), 25, dtype=np.int64), 3, default=10, limit=1000) == 25


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([[0]], dtype=np.int64), "input 'k' is 0; it must be between 1 and 50"),
        (np.array([[-3]], dtype=np.int64), "input 'k' is -3"),
        (np.array([[51]], dtype=np.int64), "input 'k' is 51; it must be between 1 and 50"),
        (np.array([[5.0]]), "input 'k' must be INT64"),
        (np.array([[5], [5]], dtype=np.int64), r"shape \[1, 1\] like 'user_id', got \[2, 1\]"),
    ],
)
def test_bad_k_names_the_input_and_the_limit(values, message):
    with pytest.raises(RequestError, match=message):
        check_k(values, 1, default=10, limit=50)


def test_k_must_agree_across_the_users_of_a_request():
    with pytest.raises(RequestError, match="one value for every user"):
        check_k(np.array([[5], [6]], dtype=np.int64), 2, default=10, limit=50)
