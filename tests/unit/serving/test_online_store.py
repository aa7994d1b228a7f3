import numpy as np
import pytest

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError
from build_ensemble.serving.online_store import open_store, read_online, view_features


def _objects(values: list) -> np.ndarray:
    """A 1-d object array of the values (list values stay elements)."""
    out = np.empty(len(values), dtype=object)
    for number, value in enumerate(values):
        out[number] = value
    return out


def read_online_reference(store, view, entity, ids, features):
    """The same read through Feast's public ``get_online_features``."""
    rows = [{entity: int(i)} for i in ids]
    values = store.get_online_features(features=[f"{view}:{name}" for name in features], entity_rows=rows).to_dict()
    columns = {name: _objects(values[name]) for name in features}
    found = np.zeros(len(rows), dtype=bool)
    for column in columns.values():
        found |= np.array([v is not None for v in column], dtype=bool)
    return columns, found


def test_online_reads_by_name_and_flags_unknown_ids(feature_repo):
    store = open_store(feature_repo)
    assert set(view_features(store, C.USER_VIEW)) == {"age", "city"}
    columns, found = read_online(store, C.USER_VIEW, C.USER_ID, np.array([3, 1, 99]), ["city", "age"])
    assert found.tolist() == [True, True, False]
    assert columns["age"].tolist() == [40, 20, None]
    assert columns["city"].tolist() == [None, "a", None]  # a missing feature is None, the row still found
    items, found = read_online(store, C.ITEM_VIEW, C.ITEM_ID, np.array([10]), ["genres", "year"])
    assert items["genres"][0] == ["x", "y"] and items["year"][0] == 1999


def test_missing_repository_is_named(tmp_path):
    with pytest.raises(ArtifactNotFoundError, match="feature_store.yaml is missing"):
        open_store(tmp_path)
    (tmp_path / "feature_store.yaml").write_text("project: x\n")
    with pytest.raises(ArtifactNotFoundError, match="data/registry.db is missing"):
        open_store(tmp_path)


def test_fast_read_equals_get_online_features(feature_repo):
    store = open_store(feature_repo)
    ids = np.array([2, 99, 1, 3, 1])
    for view, entity, names in ((C.USER_VIEW, C.USER_ID, ["age", "city"]), (C.ITEM_VIEW, C.ITEM_ID, ["genres", "year"])):
        fast, fast_found = read_online(store, view, entity, ids if view == C.USER_VIEW else np.array([11, 10, 5]), names)
        ref, ref_found = read_online_reference(store, view, entity, ids if view == C.USER_VIEW else np.array([11, 10, 5]), names)
        np.testing.assert_array_equal(fast_found, ref_found)
        for name in names:
            assert list(fast[name]) == list(ref[name]), name


def test_the_store_check_names_a_missing_or_corrupt_online_store(feature_repo, tmp_path):
    import shutil

    from build_ensemble.serving.online_store import OnlineReader

    copy = tmp_path / "repo"
    shutil.copytree(feature_repo, copy)
    reader = OnlineReader(open_store(copy), C.USER_VIEW, C.USER_ID, ["age"])
    reader.check()
    (copy / C.FEAST_SQLITE_STORE).write_bytes(b"not a database" * 100)
    with pytest.raises(ArtifactNotFoundError, match=r"online store \(sqlite\) of .* cannot be read: DatabaseError"):
        reader.check()
    (copy / C.FEAST_SQLITE_STORE).unlink()
    with pytest.raises(ArtifactNotFoundError, match="online_store.db is missing"):
        reader.check()


def test_the_readers_feature_list_is_not_changed_by_the_store(feature_repo):
    from build_ensemble.serving.online_store import OnlineReader

    reader = OnlineReader(open_store(feature_repo), C.USER_VIEW, C.USER_ID, ["age", "city"])
    for _ in range(3):
        reader.read(np.array([1, 2]))
    assert reader.features == ["age", "city"]
