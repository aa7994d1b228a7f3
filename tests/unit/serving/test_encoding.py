"""Serve-time Categorify on hand-written category files (the equality with NVTabular's own
transform is tested on fitted workflows in tests/unit/test_workflow.py and test_encoders_vs_nvtabular.py)."""

import numpy as np
import pandas as pd

from build_ensemble.serving.encoding import CATEGORIES_DIR, NULL_CODE, OOV_CODE, CategoryEncoder, copy_categories, unique_file


def test_integer_values_nulls_and_unseen_values():
    encoder = CategoryEncoder("year", np.array([1999, 2001, 1980]), np.array([3, 4, 5]))
    codes = encoder.encode(np.array([2001, 1980, 1234, np.nan, 1999], dtype=object))
    assert codes.tolist() == [4, 5, OOV_CODE, NULL_CODE, 3] and codes.dtype == np.int64
    assert encoder.encode(np.array([2**40], dtype=np.int64)).tolist() == [OOV_CODE]  # above every value seen


def test_string_values_nulls_and_unseen_values():
    encoder = CategoryEncoder("city", np.array(["b", "a"], dtype=object), np.array([3, 4]))
    assert encoder.encode(np.array(["a", None, "zz", "b", float("nan")], dtype=object)).tolist() == [
        4, NULL_CODE, OOV_CODE, 3, NULL_CODE]


def test_read_and_copy_the_workflows_files(tmp_path):
    workflow = tmp_path / "workflow"
    (workflow / CATEGORIES_DIR).mkdir(parents=True)
    pd.DataFrame({"city": ["a", "b"]}, index=[3, 4]).to_parquet(workflow / CATEGORIES_DIR / unique_file("city"))
    copied = copy_categories(workflow, ["city"], tmp_path / "artifacts")
    assert CategoryEncoder.read(copied, "city").encode(np.array(["b"], dtype=object)).tolist() == [4]


def test_every_kind_of_missing_value_is_null_and_a_non_number_is_missing():
    """None, NaN (Python or NumPy float32), pandas' NA: the null code of a category, and the
    fill value of a continuous column, as is a value that is not a number."""
    from build_ensemble.serving.encoding import ColumnEncoder

    encoder = CategoryEncoder("year", np.array([1999, 2001]), np.array([3, 4]))
    values = np.array([None, np.float32("nan"), pd.NA, float("nan"), np.int64(2001), 1999.0, 1999.5], dtype=object)
    assert encoder.encode(values).tolist() == [NULL_CODE] * 4 + [4, 3, OOV_CODE]
    fill = ColumnEncoder("age", "continuous", [{"op": "fill", "value": 7.0}])
    assert fill.encode(np.array([None, 2, "x", pd.NA, "3.5"], dtype=object))["age"].tolist() == [7.0, 2.0, 7.0, 7.0, 3.5]
