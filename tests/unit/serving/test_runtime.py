import json

import numpy as np
import pytest

from build_ensemble import constants as C
from build_ensemble.serving import ops
from build_ensemble.serving.runtime import RetrievalRuntime, built_by


def test_a_graph_that_is_not_a_chain_is_refused():
    from merlin.schema import ColumnSchema, Schema
    from merlin.systems.dag import Ensemble

    users = [C.USER_ID] >> ops.QueryUserFeatures("x", {"age": "int64"})
    graph = (users + [C.USER_ID]) >> ops.QueryIndex("i", 10)  # the index reads the request and the features
    ensemble = Ensemble(graph, Schema([ColumnSchema(C.USER_ID, dtype=np.int64)]))
    with pytest.raises(ValueError, match="does not read only its predecessor's output"):
        RetrievalRuntime().chain(ensemble)


def test_built_by_names_the_versions_of_the_manifest(tmp_path):
    (tmp_path / C.MANIFEST_FILE).write_text(json.dumps({"python": "3.11.7", "packages": {"feast": "0.34.1", "x": None}}))
    assert built_by(tmp_path).startswith("exported with Python 3.11.7 (feast 0.34.1); this server runs Python 3.")
    assert built_by(tmp_path / "missing").endswith(f"has no readable {C.MANIFEST_FILE}")
