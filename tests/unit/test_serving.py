import numpy as np
import pytest

from build_ensemble.serving import RequestError, check_user_ids


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
