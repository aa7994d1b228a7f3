"""Client of the served retrieval model, over gRPC or HTTP (KServe v2), with one request builder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from build_ensemble import constants as C
from build_ensemble.errors import ConfigError, ServerError

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
DEFAULT_TIMEOUT = 30.0  # seconds per request


@dataclass
class Recommendation:
    """Top-k items of one user.

    Attributes:
        user_id: raw user id (int, or str for a model of string ids).
        item_ids: raw item ids, best first (ints or strs).
        scores: their scores (inner products; popularity shares for a fallback).
        fallback: True when the user was unknown and got the popular items.
        partial_features: True when some of a known user's features were missing (defaults used).
        item_features: ``{feature: [k] values}`` when the model returns them.
    """

    user_id: int | str
    item_ids: list
    scores: list
    fallback: bool
    partial_features: bool = False
    item_features: dict = field(default_factory=dict)


def _module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return module


def build_inputs(module, user_ids, rank: int = 2, k: int | None = None, datatype: str = "INT64") -> list:
    """The request's inputs: ``user_id`` as ``[n, 1]`` INT64 or BYTES (``[n]`` for a rank-1 model
    input), and ``k`` (``[n, 1]``, the same value for every user) when given.

    Args:
        module: ``tritonclient.grpc`` or ``tritonclient.http``.
        user_ids: ``[n]`` raw user ids (ints, or strings for a model of string ids).
        rank: rank of the model's ``user_id`` input (this project's models: 2).
        k: items per user; None: the model's default.
        datatype: the model's ``user_id`` datatype, ``INT64`` or ``BYTES``.

    Raises:
        ConfigError: for ids that are not integers when the model takes INT64.
    """
    shape = (-1, 1) if rank == 2 else (-1,)
    if datatype == "BYTES":
        ids = np.array([str(u).encode() for u in np.asarray(user_ids, dtype=object).reshape(-1)], dtype=object)
    else:
        try:
            ids = np.asarray([int(u) for u in np.asarray(user_ids, dtype=object).reshape(-1)], dtype=np.int64)
        except ValueError:
            raise ConfigError(f"user ids must be integers for this model (its user_id is INT64), got {list(user_ids)[:3]}") from None
    arrays = {C.INPUT_USER_ID: (ids.reshape(shape), datatype)}
    if k is not None:
        arrays[C.INPUT_K] = (np.full(ids.reshape(shape).shape, k, dtype=np.int64), "INT64")
    tensors = []
    for name, (array, kind) in arrays.items():
        tensor = module.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _plain(value):
    """A tensor element as a Python value (BYTES elements arrive as bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def parse_outputs(user_ids, outputs: dict) -> list:
    """Turn the model's output arrays into one :class:`Recommendation` per user."""
    features = {
        name.removeprefix(C.ITEM_FEATURE_OUTPUT_PREFIX): values
        for name, values in outputs.items()
        if name.startswith(C.ITEM_FEATURE_OUTPUT_PREFIX) and name != C.OUTPUT_ITEM_IDS
    }
    result = []
    for row, user in enumerate(np.asarray(user_ids).reshape(-1)):
        result.append(
            Recommendation(
                user_id=_plain(user),
                item_ids=[_plain(i) for i in outputs[C.OUTPUT_ITEM_IDS][row]],
                scores=outputs[C.OUTPUT_SCORES][row].astype(float).tolist(),
                fallback=bool(outputs[C.OUTPUT_FALLBACK][row].reshape(-1)[0]),
                partial_features=C.OUTPUT_PARTIAL in outputs and bool(outputs[C.OUTPUT_PARTIAL][row].reshape(-1)[0]),
                item_features={name: [_plain(v) for v in values[row]] for name, values in features.items()},
            )
        )
    return result


def _unreachable(exc: Exception) -> bool:
    """Whether an exception of either client means nothing listens on the address."""
    if isinstance(exc, (ConnectionError, OSError)):
        return True
    message = getattr(exc, "message", lambda: "")
    text = (message() if callable(message) else str(message)) or str(exc)
    return "failed to connect" in text or "Connection refused" in text or "UNAVAILABLE" in str(getattr(exc, "status", lambda: "")())


class RetrievalClient:
    """Asks the served model for the top-k items of users.

    Args:
        url: ``host:port`` of the server (default: loopback, the protocol's default port).
        protocol: ``grpc`` or ``http``.
        model: Triton model name.
        timeout: seconds per request.
    """

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = C.MODEL_NAME,
                 timeout: float = DEFAULT_TIMEOUT):
        self.protocol = protocol
        self.module = _module(protocol)
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        self.timeout = timeout
        self.last_version: str | None = None  # the model version that answered the last request
        if protocol == "grpc":
            self.client = self.module.InferenceServerClient(self.url)
        else:
            self.client = self.module.InferenceServerClient(self.url, connection_timeout=timeout, network_timeout=timeout)

    def infer(self, user_ids, k: int | None = None) -> dict:
        """Raw output arrays of one request, by output name.

        Raises:
            tritonclient.utils.InferenceServerException: with the server's message.
        """
        meta = self._metadata()
        inputs = build_inputs(self.module, user_ids, meta["rank"], k, meta["datatype"])
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        response = self.client.infer(self.model, inputs, **kwargs)
        answer = response.get_response()
        self.last_version = answer.model_version if self.protocol == "grpc" else answer.get("model_version")
        return {name: response.as_numpy(name) for name in meta["outputs"]}

    def recommend(self, user_ids, k: int | None = None) -> list:
        """One :class:`Recommendation` per user, in request order (``k`` items each; None: the model's default)."""
        outputs = self.infer(user_ids, k)
        ids = [str(u) for u in user_ids] if self._metadata()["datatype"] == "BYTES" else [int(u) for u in user_ids]
        return parse_outputs(np.array(ids, dtype=object), outputs)

    def _metadata(self) -> dict:
        """Output names and the ``user_id`` input's rank, asked once from the server.

        Raises:
            ServerError: when no server answers on the address.
        """
        if not hasattr(self, "_meta"):
            try:
                meta = self.client.get_model_metadata(self.model)
            except Exception as exc:  # noqa: BLE001  each protocol fails its own way; say it once
                if _unreachable(exc):
                    raise ServerError(f"no server answers on {self.url} ({self.protocol}): start one with "
                                      f"`build-ensemble serve`") from None
                raise
            if not isinstance(meta, dict):  # gRPC answers with a protobuf message
                meta = {"inputs": [{"name": i.name, "shape": list(i.shape), "datatype": i.datatype} for i in meta.inputs],
                        "outputs": [{"name": o.name} for o in meta.outputs]}
            user = next(i for i in meta["inputs"] if i["name"] == C.INPUT_USER_ID)
            self._meta = {"rank": len(user["shape"]), "datatype": user["datatype"],
                          "outputs": [o["name"] for o in meta["outputs"]]}
        return self._meta

    def is_ready(self) -> bool:
        return bool(self.client.is_server_ready())

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
