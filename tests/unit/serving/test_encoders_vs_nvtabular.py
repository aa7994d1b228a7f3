"""The serve-time encoder equals NVTabular's own ``Workflow.transform`` of the user sub-workflow,
for every operator a dataset spec can produce, nulls, unseen values and empty lists included."""

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.errors import DataError
from build_ensemble.prepared import DataSpec, SplitWriter
from build_ensemble.serving.encoding import ColumnEncoder
from build_ensemble.workflow import USER_SUBGRAPH, encode, fit_workflow, load_workflow, serving_encoders

SPEC = DataSpec(
    user_features=("uid_group", "rare", "interests", "age", "income", "visits"),
    item_features=("category",),
    list_features=("interests",),
    continuous_features=("age", "income", "visits"),
    options={"rare": {"freq_threshold": 3}, "income": {"log": True}, "visits": {"fill": -1.0}},
    string_ids=("user_id", "item_id"),
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec_workflow")
    rng = np.random.default_rng(3)
    n = 60
    users = pd.DataFrame({
        C.USER_ID: [f"u{i}" for i in range(n)],
        "uid_group": rng.choice(["a", "b", "c"], n).astype(object),
        "rare": [f"r{i % 12}" if i % 5 else "common" for i in range(n)],
        "interests": [sorted(set(rng.choice(list("wxyz"), rng.integers(0, 3)))) for _ in range(n)],
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.integers(18, 80, n)).astype("float64"),
        "income": rng.lognormal(10, 1, n),
        "visits": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 50, n)).astype("float64"),
    })
    items = pd.DataFrame({C.ITEM_ID: [f"sku-{i}" for i in range(30)], "category": rng.choice(["p", "q"], 30)})
    writer = SplitWriter(root, SPEC)
    writer.add_entities(users, items)
    for name, rows in (("train", 300), ("valid", 40), ("test", 40)):
        writer.write(name, pd.DataFrame({C.USER_ID: rng.choice(users[C.USER_ID], rows),
                                         C.ITEM_ID: rng.choice(items[C.ITEM_ID], rows), C.CLICK: 1}))
    data = writer.close()
    transformed = fit_workflow(data, root, root / ".work")
    return load_workflow(transformed.workflow_dir), transformed.workflow_dir, users


def _probe(users: pd.DataFrame) -> pd.DataFrame:
    """Every training user, then rows with nulls, unseen values, empty and unseen lists, NaN numbers."""
    extra = pd.DataFrame({
        C.USER_ID: ["u3", "never-seen", None, "u7"],
        "uid_group": [None, "zzz", "a", "b"],
        "rare": ["r1", "common", None, "unseen"],
        "interests": [[], ["w", "unseen"], None, ["z", "z"]],
        "age": [np.nan, 200.0, 18.0, 40.0],
        "income": [0.0, np.nan, 1e6, 5.5],
        "visits": [np.nan, 3.0, np.nan, 0.0],
    })
    return pd.concat([users, extra], ignore_index=True)


def test_every_operator_of_a_spec_workflow_is_reproduced(fitted):
    workflow, workflow_dir, users = fitted
    specs = serving_encoders(workflow, SPEC)
    assert sorted(s["column"] for s in specs) == sorted([C.USER_ID, *SPEC.user_features])
    steps = {s["column"]: [step["op"] for step in s["steps"]] for s in specs}
    assert steps == {C.USER_ID: ["categorify"], "uid_group": ["categorify"], "rare": ["categorify"],
                     "interests": ["categorify"], "age": ["fill", "normalize"], "income": ["fill", "log", "normalize"],
                     "visits": ["fill", "normalize"]}
    visits = next(s for s in specs if s["column"] == "visits")
    assert visits["steps"][0]["value"] == -1.0  # the spec's fill, not the median
    probe = _probe(users)
    # NVTabular cannot encode a null list; the pipeline stores a missing list as an empty one,
    # and the serve-time encoder reads a None from the feature store as one.
    expected = encode(workflow, USER_SUBGRAPH, probe.assign(interests=probe["interests"].map(lambda v: v or [])))
    for spec in specs:
        got = ColumnEncoder.read(spec, workflow_dir / "categories").encode(probe[spec["column"]].to_numpy(dtype=object))
        column = spec["column"]
        if spec["kind"] == "list":
            lists = expected[column].tolist()
            np.testing.assert_array_equal(got[f"{column}__values"], np.concatenate([np.asarray(v) for v in lists]))
            assert got[f"{column}__offsets"].tolist() == np.cumsum([0] + [len(v) for v in lists]).tolist()
        elif spec["kind"] == "continuous":
            assert got[column].dtype == np.float32
            np.testing.assert_allclose(got[column], expected[column].to_numpy(np.float32), rtol=1e-6, err_msg=column)
        else:
            np.testing.assert_array_equal(got[column], expected[column].to_numpy(), err_msg=column)


def test_an_operator_the_encoder_does_not_know_fails_the_export_naming_it(fitted, tmp_path):
    import nvtabular as nvt
    from merlin.dag.ops.subgraph import Subgraph
    from nvtabular import ops

    graph = Subgraph(USER_SUBGRAPH, ([C.USER_ID] >> ops.Categorify(out_path=str(tmp_path))) + (["age"] >> ops.Clip(min_value=0)))
    workflow = nvt.Workflow(graph)
    workflow.fit(nvt.Dataset(pd.DataFrame({C.USER_ID: ["a", "b"], "age": [1.0, 5.0]}), cpu=True))
    with pytest.raises(DataError, match="the workflow's Clip on column age has no serve-time encoder"):
        serving_encoders(workflow, DataSpec(user_features=("age",), continuous_features=("age",)))
