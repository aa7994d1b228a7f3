import numpy as np

from build_ensemble import constants as C
from build_ensemble.export import GraphSpec, executor_config, make_ensemble, tensorflow_tower_config
from build_ensemble.serving.ops import PredictQueryTower

SPEC = GraphSpec(
    tower_inputs=["age", "user_id"],
    tower_output="output_1",
    dim=64,
    user_features={"age": "int64", "city": "str"},
    item_features={"genres": "str", "year": "int64"},
    top_k=7,
)


def test_constructing_the_graph_touches_nothing(tmp_path):
    """No feature store, index or model is read or materialized when the graph is built."""
    ensemble = make_ensemble(SPEC, tmp_path / "does-not-exist", "../feature_repo")
    assert ensemble.input_schema.column_names == [C.USER_ID, C.INPUT_K]
    assert ensemble.output_schema.column_names == [
        C.OUTPUT_ITEM_IDS, C.OUTPUT_SCORES, C.OUTPUT_FALLBACK, C.OUTPUT_PARTIAL,
    ]
    assert list(tmp_path.iterdir()) == []


def test_executor_config_batches_and_keeps_ids_int64(tmp_path):
    from google.protobuf import text_format
    import tritonclient.grpc.model_config_pb2 as mc

    config = executor_config(make_ensemble(SPEC, tmp_path, "../fr"), "retrieval", 256, 3)
    text = text_format.MessageToString(config)
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed.backend == "python" and parsed.max_batch_size == 256
    assert parsed.HasField("dynamic_batching")
    assert not parsed.dynamic_batching.HasField("default_queue_policy")  # see executor_config
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in parsed.input] == [
        ("user_id", mc.TYPE_INT64, [1], False),
        ("k", mc.TYPE_INT64, [1], True),
    ]
    outputs = {o.name: (o.data_type, list(o.dims)) for o in parsed.output}
    assert outputs == {
        "item_ids": (mc.TYPE_INT64, [-1]),
        "scores": (mc.TYPE_FP32, [-1]),
        "fallback": (mc.TYPE_BOOL, [1]),
        "partial_features": (mc.TYPE_BOOL, [1]),
    }
    assert (parsed.instance_group[0].kind, parsed.instance_group[0].count) == (mc.ModelInstanceGroup.KIND_CPU, 3)


def test_item_features_become_outputs(tmp_path):
    import tritonclient.grpc.model_config_pb2 as mc

    spec = GraphSpec(**{**SPEC.__dict__, "with_item_features": True})
    config = executor_config(make_ensemble(spec, tmp_path, "../fr"), "retrieval", 256, 1)
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outputs["item_genres"] == (mc.TYPE_STRING, [-1]) and outputs["item_year"] == (mc.TYPE_INT64, [-1])


def test_tensorflow_tower_config_for_gpu_images():
    import tritonclient.grpc.model_config_pb2 as mc

    op = PredictQueryTower("unused", ["age", "user_id"], "output_1", 64)
    config = tensorflow_tower_config(op, "0_query_tower", 256)
    assert (config.backend, config.platform) == ("tensorflow", "tensorflow_savedmodel")
    assert config.parameters["TF_SIGNATURE_DEF"].string_value == "serving_default"
    assert [(i.name, i.data_type, list(i.dims), list(i.reshape.shape)) for i in config.input] == [
        ("age", mc.TYPE_INT64, [1], []),
        ("user_id", mc.TYPE_INT64, [1], []),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("output_1", mc.TYPE_FP32, [64])]
    assert config.max_batch_size == 256 and config.HasField("dynamic_batching")


def test_the_tensorflow_tower_takes_continuous_inputs_as_fp32_and_refuses_lists():
    import pytest
    import tritonclient.grpc.model_config_pb2 as mc

    from build_ensemble.errors import ConfigError

    op = PredictQueryTower("unused", ["age", "user_id"], "output_1", 8)
    config = tensorflow_tower_config(op, "0_query_tower", 256, float_inputs=("age",))
    assert [(i.name, i.data_type) for i in config.input] == [("age", mc.TYPE_FP32), ("user_id", mc.TYPE_INT64)]
    lists = PredictQueryTower("unused", ["tags__offsets", "tags__values", "user_id"], "output_1", 8)
    with pytest.raises(ConfigError, match=r"reads list features \(tags__offsets, tags__values\).*--tower-backend python"):
        tensorflow_tower_config(lists, "0_query_tower", 256)


def test_a_tensorflow_tower_with_list_features_is_refused_before_training(tmp_path):
    import json

    import pytest

    from build_ensemble.config import make_config
    from build_ensemble.errors import ConfigError
    from build_ensemble.export import check_tower_backend

    spec = {"user_features": ["tags", "age"], "item_features": [], "list_features": ["tags"]}
    (tmp_path / "data.json").write_text(json.dumps({"spec": spec, "counts": {}}))
    check_tower_backend(make_config(), tmp_path)  # the Python backend takes lists
    with pytest.raises(ConfigError, match=r"would read list features \(tags\).*use --tower-backend python"):
        check_tower_backend(make_config(overrides={"tower_backend": "tensorflow"}), tmp_path)
