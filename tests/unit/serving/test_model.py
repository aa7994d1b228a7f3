import json
import sys

import numpy as np
import pytest

from build_ensemble import constants as C
from build_ensemble.errors import RecsysError
from build_ensemble.serving.metrics import REQUESTS, STAGE_SECONDS, USERS, ModelMetrics
from build_ensemble.serving.model import STAGE_SAMPLE, RequestError, TritonPythonModel, check_k, check_user_ids


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


# ---------------------------------------------------------------- TritonPythonModel with a stand-in pb_utils

OUTPUTS = {C.OUTPUT_ITEM_IDS: np.int64, C.OUTPUT_SCORES: np.float32, C.OUTPUT_FALLBACK: np.bool_}


class GraphStandIn:
    """Answers like the graph: item ``10 * user + j`` with score ``-j`` for j < the largest k."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def transform(self, ensemble, table, seconds=None):
        from merlin.table import TensorTable

        if seconds is not None:
            seconds.update(features=0.0004, index=0.0002)
        self.calls.append({name: table[name].values.copy() for name in table.columns})
        if self.fail:
            raise self.fail
        ids = table[C.USER_ID].values
        k = int(table[C.INPUT_K].values.max()) if C.INPUT_K in table.columns else 4
        return TensorTable({
            C.OUTPUT_ITEM_IDS: ids[:, None] * 10 + np.arange(k),
            C.OUTPUT_SCORES: np.tile(-np.arange(k, dtype=np.float64), (len(ids), 1)),  # cast to FP32 by the model
            C.OUTPUT_FALLBACK: (ids == 0).reshape(-1, 1),
        })


def _model(pb_utils, graph) -> TritonPythonModel:
    model = TritonPythonModel()
    model.pb, model.ensemble, model.runtime = pb_utils, None, graph
    model.outputs, model.per_item = dict(OUTPUTS), {C.OUTPUT_ITEM_IDS, C.OUTPUT_SCORES}
    model.default_k, model.max_k, model.string_ids = 4, 50, False
    model.metrics = ModelMetrics(pb_utils, C.MODEL_NAME, "1")
    return model


def _counts(pb_utils, name: str) -> dict:
    """``{labels without model/version: value}`` of one metric family of the stand-in."""
    family = pb_utils.MetricFamily.families[name]
    return {tuple(v for k, v in sorted(m.labels.items()) if k not in ("model", "version")): m.value for m in family.series}


def _request(pb_utils, user_ids, k=None):
    inputs = [pb_utils.Tensor(C.INPUT_USER_ID, np.array(user_ids, dtype=np.int64).reshape(-1, 1))]
    if k is not None:
        inputs.append(pb_utils.Tensor(C.INPUT_K, np.full((len(user_ids), 1), k, dtype=np.int64)))
    return pb_utils.InferenceRequest(inputs)


def _outputs(response) -> dict:
    return {t.name(): t.as_numpy() for t in response.output_tensors}


def test_a_batch_of_requests_runs_as_one_graph_call_and_a_bad_one_fails_alone(pb_utils):
    graph = GraphStandIn()
    model = _model(pb_utils, graph)
    requests = [_request(pb_utils, [1, 2]), _request(pb_utils, [5, -3]), _request(pb_utils, [0], k=2),
                pb_utils.InferenceRequest([])]
    first, bad, third, missing = model.execute(requests)
    assert len(graph.calls) == 1  # the three good users, one graph call
    np.testing.assert_array_equal(graph.calls[0][C.USER_ID], [1, 2, 0])
    np.testing.assert_array_equal(graph.calls[0][C.INPUT_K], [4, 4, 2])
    assert bad.has_error() and bad.error().code() == pb_utils.TritonError.INVALID_ARG
    assert bad.error().message() == "input 'user_id' holds a negative id (-3); ids are >= 0"
    assert missing.error().message() == "input 'user_id' is missing"
    out = _outputs(first)
    np.testing.assert_array_equal(out[C.OUTPUT_ITEM_IDS], [[10, 11, 12, 13], [20, 21, 22, 23]])
    assert out[C.OUTPUT_SCORES].dtype == np.float32 and out[C.OUTPUT_FALLBACK].tolist() == [[False], [False]]
    out = _outputs(third)  # cut to its own k
    np.testing.assert_array_equal(out[C.OUTPUT_ITEM_IDS], [[0, 1]])
    assert out[C.OUTPUT_FALLBACK].tolist() == [[True]]


def test_k_is_sent_to_the_graph_only_when_a_request_asks_for_another(pb_utils):
    graph = GraphStandIn()
    _model(pb_utils, graph).execute([_request(pb_utils, [1]), _request(pb_utils, [2], k=4)])
    assert set(graph.calls[0]) == {C.USER_ID}


def test_only_bad_requests_never_reach_the_graph(pb_utils):
    graph = GraphStandIn()
    (response,) = _model(pb_utils, graph).execute([_request(pb_utils, [1], k=51)])
    assert graph.calls == [] and "input 'k' is 51; it must be between 1 and 50" in response.error().message()


@pytest.mark.parametrize(
    "failure, message",
    [(RecsysError("feature store lookup in view user_features failed: refused"),
      "feature store lookup in view user_features failed: refused"),
     (KeyError("item_ids"), "internal error: KeyError: 'item_ids'")],
)
def test_a_failing_graph_answers_every_request_with_one_internal_error(pb_utils, failure, message):
    responses = _model(pb_utils, GraphStandIn(fail=failure)).execute([_request(pb_utils, [1]), _request(pb_utils, [2])])
    assert [(r.error().code(), r.error().message()) for r in responses] == [(pb_utils.TritonError.INTERNAL, message)] * 2


def test_a_graph_that_cannot_load_fails_initialize_naming_what_built_it(pb_utils, tmp_path):
    version = tmp_path / C.MODEL_NAME / "1"
    (version / "ensemble").mkdir(parents=True)
    (version / "ensemble" / "metadata.json").write_text(json.dumps({"versions": {"python": sys.version}}))
    (version / "ensemble" / "ensemble.pkl").write_bytes(b"cbuild_ensemble.ops\nQueryIndex\n.")  # the old layout's path
    (version / C.MANIFEST_FILE).write_text(json.dumps({"python": "3.10.12", "packages": {"merlin-systems": "23.8.0"}}))
    args = {"model_config": json.dumps({"name": C.MODEL_NAME, "output": []}),
            "model_repository": str(tmp_path / C.MODEL_NAME), "model_version": "1"}
    with pytest.raises(pb_utils.TritonModelException) as caught:
        TritonPythonModel().initialize(args)
    message = str(caught.value)
    assert message.startswith(f"{C.MODEL_NAME}: the graph in ") and "No module named 'build_ensemble.ops'" in message
    assert "exported with Python 3.10.12 (merlin-systems 23.8.0)" in message and "rebuild or re-export" in message


def test_a_model_py_of_the_old_layout_gets_one_line_saying_to_re_export():
    with pytest.raises(ImportError, match=r"exported by an older build-ensemble .* re-export it with `build-ensemble export"):
        from build_ensemble.serving import TritonPythonModel as _  # noqa: F401


def test_other_missing_names_of_the_serving_package_are_attribute_errors():
    import build_ensemble.serving as serving

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        serving.nothing  # noqa: B018


def test_string_ids_are_decoded_and_empty_or_broken_ones_refused():
    ids = check_user_ids(np.array([[b"user-1"], ["caf\u00e9".encode()]], dtype=object), strings=True)
    assert ids.tolist() == ["user-1", "caf\u00e9"]
    with pytest.raises(RequestError, match=r"input 'user_id' holds an empty id at position 1"):
        check_user_ids(np.array([[b"a"], [b""]], dtype=object), strings=True)
    with pytest.raises(RequestError, match=r"input 'user_id' holds an id that is not UTF-8"):
        check_user_ids(np.array([[b"\xff\xfe"]], dtype=object), strings=True)
    with pytest.raises(RequestError, match=r"input 'user_id' must be BYTES \(string ids\), got int64"):
        check_user_ids(np.array([[3]], dtype=np.int64), strings=True)


def test_requests_users_and_stages_are_counted_in_the_models_own_metrics(pb_utils):
    model = _model(pb_utils, GraphStandIn())
    model.execute([_request(pb_utils, [1, 0]), _request(pb_utils, [-4]), _request(pb_utils, [2], k=99), _request(pb_utils, [3])])
    model.metrics.flush()
    assert _counts(pb_utils, REQUESTS) == {("ok", ""): 2, ("rejected", "negative_id"): 1, ("rejected", "k_range"): 1}
    assert _counts(pb_utils, USERS) == {("ranked",): 2, ("fallback",): 1}  # user 0 is the stand-in's unknown user
    stages = pb_utils.MetricFamily.families[STAGE_SECONDS].series
    assert {m.labels["stage"]: m.observed for m in stages} == {"features": [0.0004], "index": [0.0002]}
    assert all(m.labels["model"] == C.MODEL_NAME and m.labels["version"] == "1" for m in stages)
    for _ in range(STAGE_SAMPLE):  # stage times: one batch in STAGE_SAMPLE, the first included
        model.execute([_request(pb_utils, [1])])
    model.metrics.flush()
    assert {m.labels["stage"]: len(m.observed) for m in stages} == {"features": 2, "index": 2}
    assert _counts(pb_utils, REQUESTS)[("ok", "")] == 2 + STAGE_SAMPLE  # counters count every request
    failing = _model(pb_utils, GraphStandIn(fail=KeyError("x")))
    failing.execute([_request(pb_utils, [1])])
    failing.finalize()  # sends what is left
    assert _counts(pb_utils, REQUESTS)[("failed", "KeyError")] == 1


def test_counts_reach_the_server_from_the_sending_thread_within_the_flush_interval(pb_utils):
    """``execute`` makes no metric call itself; the thread sends its counts, summed, shortly after."""
    import time

    from build_ensemble.serving.metrics import FLUSH_S

    model = _model(pb_utils, GraphStandIn())
    for _ in range(3):
        model.execute([_request(pb_utils, [1]), _request(pb_utils, [2])])
    deadline = time.monotonic() + 20 * FLUSH_S
    while _counts(pb_utils, REQUESTS) != {("ok", ""): 6} and time.monotonic() < deadline:
        time.sleep(FLUSH_S / 4)
    assert _counts(pb_utils, REQUESTS) == {("ok", ""): 6}
    series = pb_utils.MetricFamily.families[REQUESTS].series
    assert len(series) == 1 and series[0].threads == {"retrieval-metrics"}  # never from execute's thread
    model.finalize()
    assert not model.metrics._thread.is_alive()


def test_without_histograms_the_stage_times_are_a_sum_and_a_count(pb_utils):
    del pb_utils.MetricFamily.HISTOGRAM  # a Triton older than histogram metrics
    try:
        metrics = ModelMetrics(pb_utils, C.MODEL_NAME, "1")
        metrics.stages({"tower": 0.5})
        metrics.stages({"tower": 0.25})
        metrics.close()
        assert _counts(pb_utils, f"{STAGE_SECONDS}_sum") == {("tower",): 0.75}
        assert _counts(pb_utils, f"{STAGE_SECONDS}_count") == {("tower",): 2}
    finally:
        pb_utils.MetricFamily.HISTOGRAM = 2


def test_k_can_be_a_kserve_request_parameter(pb_utils):
    graph = GraphStandIn()
    model = _model(pb_utils, graph)
    ids = pb_utils.Tensor(C.INPUT_USER_ID, np.array([[1], [2]], dtype=np.int64))
    good, bad = model.execute([pb_utils.InferenceRequest([ids], parameters={"k": 2}),
                               pb_utils.InferenceRequest([ids], parameters={"k": "two"})])
    assert _outputs(good)[C.OUTPUT_ITEM_IDS].shape == (2, 2)
    assert bad.error().message() == "parameter 'k' must be an integer, got 'two'"
