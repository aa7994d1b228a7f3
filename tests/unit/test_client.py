import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from build_ensemble import constants as C
from build_ensemble.client import RetrievalClient, build_inputs, parse_outputs


@pytest.mark.parametrize("module", [grpcclient, httpclient])
def test_one_request_builder_for_both_protocols(module):
    user_id, k = build_inputs(module, [3, 2**40], k=7)
    assert (user_id.name(), user_id.shape(), user_id.datatype()) == (C.INPUT_USER_ID, [2, 1], "INT64")
    assert (k.name(), k.shape(), k.datatype()) == (C.INPUT_K, [2, 1], "INT64")
    (only,) = build_inputs(module, [5], rank=1)
    assert only.shape() == [1]


def test_outputs_become_one_recommendation_per_user():
    outputs = {
        C.OUTPUT_ITEM_IDS: np.array([[4, 5], [1, 2]], dtype=np.int64),
        C.OUTPUT_SCORES: np.array([[0.5, 0.25], [0.1, 0.05]], dtype=np.float32),
        C.OUTPUT_FALLBACK: np.array([[False], [True]]),
        C.OUTPUT_PARTIAL: np.array([[True], [False]]),
        "item_genres": np.array([[b"a|b", b""], [b"c", b"d"]], dtype=object),
    }
    known, unknown = parse_outputs(np.array([9, 10**9]), outputs)
    assert (known.user_id, known.item_ids, known.scores) == (9, [4, 5], [0.5, 0.25])
    assert (known.fallback, known.partial_features, known.item_features) == (False, True, {"genres": ["a|b", ""]})
    assert (unknown.fallback, unknown.partial_features) == (True, False)


def test_an_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocol must be one of grpc, http, got 'kserve'"):
        RetrievalClient("127.0.0.1:1", protocol="kserve")


def test_string_ids_become_bytes_and_letters_are_refused_for_an_int64_model():
    from build_ensemble.errors import ConfigError

    (user_id,) = build_inputs(grpcclient, ["user-1", "x"], datatype="BYTES")
    assert (user_id.datatype(), user_id.shape()) == ("BYTES", [2, 1])
    with pytest.raises(ConfigError, match=r"user ids must be integers for this model \(its user_id is INT64\), got \['abc'\]"):
        build_inputs(grpcclient, ["abc"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_server_is_one_message_on_both_protocols(protocol):
    from build_ensemble.errors import ServerError
    from tests.conftest import free_port

    url = f"127.0.0.1:{free_port()}"
    with RetrievalClient(url, protocol, timeout=5) as client, pytest.raises(ServerError) as caught:
        client.recommend([3])
    assert str(caught.value) == f"no server answers on {url} ({protocol}): start one with `build-ensemble serve`"
