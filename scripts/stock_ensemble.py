"""The stock merlin-systems retrieval ensemble, exported from one of our builds: the anchor of
the serving benchmark.

    QueryFeast -> TransformWorkflow(user sub-workflow) -> PredictTensorflow -> QueryFaiss(setup_faiss)

Everything is merlin-systems 23.08 as shipped, except that the TensorFlow-backend model it
writes for the tower is served by a small Python-backend model loading the same SavedModel
(the CPU tritonserver here has no TensorFlow backend).

    .venv/bin/python scripts/stock_ensemble.py BUILD_DIR FEATURE_REPO REPOSITORY
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

TOWER_MODEL_PY = '''"""The stock ensemble's TensorFlow-backend tower, served by the Python backend (same SavedModel)."""

import json
from pathlib import Path

import tensorflow as tf
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.savedmodel"
        self.model = tf.saved_model.load(str(path))
        self.signature = self.model.signatures["serving_default"]
        self.ranks = {name: spec.shape.rank for name, spec in self.signature.structured_input_signature[1].items()}
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {}
            for name, rank in self.ranks.items():
                values = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                feeds[name] = tf.constant(values.reshape(-1) if rank == 1 else values)
            result = self.signature(**feeds)
            tensors = [pb_utils.Tensor(name, result[name].numpy()) for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def export_stock(build_dir: Path, feature_repo: Path, repository: Path, top_k: int = 10) -> list:
    """Export the stock graph of a build into ``repository``; returns the model names."""
    import nvtabular as nvt
    import pandas as pd
    from feast import FeatureStore
    from merlin.schema import ColumnSchema, Schema
    from merlin.systems.dag import Ensemble
    from merlin.systems.dag.ops.faiss import QueryFaiss, setup_faiss
    from merlin.systems.dag.ops.feast import QueryFeast
    from merlin.systems.dag.ops.tensorflow import PredictTensorflow
    from merlin.systems.dag.ops.workflow import TransformWorkflow
    import numpy as np

    build_dir, feature_repo, repository = (Path(p).resolve() for p in (build_dir, feature_repo, repository))
    if repository.exists():
        shutil.rmtree(repository)
    index_path = build_dir / "stock_ivf32.faiss"
    setup_faiss(pd.read_parquet(build_dir / "item_embeddings.parquet"), str(index_path))
    workflow = nvt.Workflow.load(str(build_dir / "workflow"))
    with contextlib.chdir(feature_repo):  # QueryFeast materializes in its constructor; sources are relative
        store = FeatureStore(repo_path=str(feature_repo))
        features = ["user_id"] >> QueryFeast.from_feature_view(store=store, view="user_features", column="user_id", include_id=True)
    graph = (
        features
        >> TransformWorkflow(workflow.get_subworkflow("user"))
        >> PredictTensorflow(str(build_dir / "query_tower"))
        >> QueryFaiss(str(index_path), topk=top_k)
    )
    ensemble = Ensemble(graph, Schema([ColumnSchema("user_id", dtype=np.int64)]))
    ensemble.export(str(repository))
    for tower in repository.glob("*_predicttensorflowtriton"):
        config = (tower / "config.pbtxt").read_text()
        config = config.replace('backend: "tensorflow"', 'backend: "python"').replace('platform: "tensorflow_savedmodel"\n', "")
        (tower / "config.pbtxt").write_text(config)
        (tower / "1" / "model.py").write_text(TOWER_MODEL_PY)
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(export_stock(*map(Path, sys.argv[1:]))))
