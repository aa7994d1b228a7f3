import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.prepared import DataSpec, SplitWriter, read_parts
from build_ensemble.serving.encoding import NULL_CODE, OOV_CODE, CategoryEncoder
from build_ensemble.workflow import ITEM_SUBGRAPH, USER_SUBGRAPH, encode, fit_workflow, load_workflow

SPEC = DataSpec(user_features=("gender", "age"), item_features=("genres", "year"), list_features=("genres",))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    rng = np.random.default_rng(0)
    users = pd.DataFrame({C.USER_ID: np.arange(100, 140), "gender": rng.choice(["M", "F"], 40), "age": rng.integers(0, 7, 40)})
    items = pd.DataFrame(
        {C.ITEM_ID: np.arange(1000, 1060), "genres": [sorted(set(rng.choice(list("abcd"), 2))) for _ in range(60)],
         "year": rng.integers(1990, 2000, 60)}
    )
    writer = SplitWriter(root, SPEC)
    writer.add_entities(users, items)
    for name, n in (("train", 200), ("train", 200), ("valid", 50), ("test", 50)):  # train: two parts
        writer.write(name, pd.DataFrame({C.USER_ID: rng.integers(100, 140, n), C.ITEM_ID: rng.integers(1000, 1050, n),
                                         C.CLICK: rng.integers(0, 2, n)}))
    data = writer.close()
    return data, fit_workflow(data, root, root / ".work"), users, items


def test_only_clicked_rows_are_kept_and_ids_are_encoded(fitted):
    data, transformed, _, _ = fitted
    train = read_parts(transformed.train_dir)
    raw = data.read_split("train")
    assert len(train) == int(raw[C.CLICK].sum())
    assert train[C.USER_ID].min() >= 3  # 0 pad, 1 null, 2 out-of-vocabulary
    assert set(train.columns) == {C.USER_ID, C.ITEM_ID, "gender", "age", "genres", "year", C.CLICK}


def test_tags_drive_the_towers(fitted):
    from merlin.schema import Tags

    schema = load_workflow(fitted[1].workflow_dir).output_schema
    assert schema.select_by_tag(Tags.USER_ID).column_names == [C.USER_ID]
    assert schema.select_by_tag(Tags.ITEM_ID).column_names == [C.ITEM_ID]
    assert set(schema.select_by_tag(Tags.USER).column_names) == {C.USER_ID, "gender", "age"}
    assert set(schema.select_by_tag(Tags.ITEM).column_names) == {C.ITEM_ID, "genres", "year"}


def test_sub_workflows_encode_tables_alone(fitted):
    _, transformed, users, items = fitted
    workflow = load_workflow(transformed.workflow_dir)
    encoded_users = encode(workflow, USER_SUBGRAPH, users)
    assert list(encoded_users.columns) == [C.USER_ID, "gender", "age"] and len(encoded_users) == len(users)
    encoded_items = encode(workflow, ITEM_SUBGRAPH, items)
    assert len(encoded_items) == 60
    # items 1050.. never appear in training: they share the out-of-vocabulary id
    assert (encoded_items[C.ITEM_ID].iloc[50:] == OOV_CODE).all()


def test_vectorized_categorify_equals_the_workflow(fitted):
    """The serving transform must give exactly the codes NVTabular gives, unseen and missing values included."""
    _, transformed, users, _ = fitted
    workflow = load_workflow(transformed.workflow_dir)
    probe = pd.DataFrame(
        {C.USER_ID: np.r_[users[C.USER_ID].to_numpy(), [5, 99999, 0]],
         "gender": np.r_[users["gender"].to_numpy(), ["X", None, "M"]].astype(object),
         "age": np.r_[users["age"].to_numpy(), [3, 42, -1]]}
    )
    expected = encode(workflow, USER_SUBGRAPH, probe)
    categories = transformed.workflow_dir / "categories"
    for column in (C.USER_ID, "gender", "age"):
        got = CategoryEncoder.read(categories, column).encode(probe[column].to_numpy(dtype=object))
        np.testing.assert_array_equal(got, expected[column].to_numpy(), err_msg=column)
    gender = CategoryEncoder.read(categories, "gender").encode(np.array(["X", None], dtype=object))
    assert gender.tolist() == [OOV_CODE, NULL_CODE]


def test_a_local_dask_cluster_gives_the_same_result(fitted, tmp_path):
    """--workers 2: the join and the workflow run on a LocalCluster of two worker processes, same output."""
    from build_ensemble.workflow import DaskSettings

    data, in_process, _, _ = fitted
    settings = DaskSettings(workers=2, worker_memory="1GB", spill_dir=str(tmp_path / "dask"))
    on_cluster = fit_workflow(data, tmp_path, tmp_path / ".work", dask=settings)
    columns = [C.USER_ID, C.ITEM_ID, "gender", "age", "year", C.CLICK]
    # Same rows in the same order: the join and its seeded shuffle do not depend on where they run.
    pd.testing.assert_frame_equal(read_parts(on_cluster.train_dir)[columns], read_parts(in_process.train_dir)[columns])


def _tensorflow_after_importing_nvtabular() -> bool:
    import sys

    import nvtabular  # noqa: F401

    return sys.modules.get("tensorflow") is not None


def test_local_dask_workers_do_not_load_tensorflow():
    """The worker preload keeps TensorFlow (about 350 MB per process) out of the ETL workers."""
    from build_ensemble.workflow import DaskSettings, dask_cluster

    with dask_cluster(DaskSettings(workers=1, worker_memory="1GB")) as client:
        assert list(client.run(_tensorflow_after_importing_nvtabular).values()) == [False]
