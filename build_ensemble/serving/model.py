"""The Triton Python-backend model that runs the retrieval graph.

Triton's dynamic batcher hands ``execute`` several requests at once; their inputs are
checked one request at a time (a bad request gets its own INVALID_ARG error and does not
fail the others), their users run through the graph as one batch, and the answers are
split back, each cut to its request's ``k``.

A version that serves the NumPy tower keeps TensorFlow out of its process (about 350 MB and
2.5 s of load less); the load is logged with its time, memory and whether TensorFlow is in.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from build_ensemble import constants as C
from build_ensemble.errors import RecsysError
from build_ensemble.serving.imports import keep_out
from build_ensemble.serving.metrics import ModelMetrics
from build_ensemble.serving.tower import TOWER_DIR, is_numpy_tower

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the client must fix (answered with INVALID_ARG).

    Args:
        message: what is wrong, naming the input.
        reason: a short name of the check that failed (a label of the model's metrics).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def check_user_ids(values: np.ndarray | None, strings: bool = False) -> np.ndarray:
    """Validate the ``user_id`` tensor of one request.

    Args:
        values: the request's ``user_id`` tensor, ``[n, 1]`` int64 (BYTES, an object array of
            bytes, with ``strings``), or None if absent.
        strings: the model's user ids are strings.

    Returns:
        ``[n]`` int64 ids, or an object array of str.

    Raises:
        RequestError: naming the input and the problem.
    """
    if values is None:
        raise RequestError(f"input '{C.INPUT_USER_ID}' is missing", "missing")
    if values.dtype != (np.object_ if strings else np.int64):
        raise RequestError(f"input '{C.INPUT_USER_ID}' must be {'BYTES (string ids)' if strings else 'INT64'}, got {values.dtype}", "dtype")
    if values.ndim != 2 or values.shape[1] != 1:
        raise RequestError(f"input '{C.INPUT_USER_ID}' must have shape [batch, 1], got {list(values.shape)}", "shape")
    if values.shape[0] == 0:
        raise RequestError(f"input '{C.INPUT_USER_ID}' is empty: send at least one user id", "empty")
    if strings:
        return _string_ids(values)
    ids = values.reshape(-1)
    if (ids < 0).any():
        raise RequestError(f"input '{C.INPUT_USER_ID}' holds a negative id ({int(ids[ids < 0][0])}); ids are >= 0", "negative_id")
    return ids


def _string_ids(values: np.ndarray) -> np.ndarray:
    try:
        ids = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)], dtype=object)
    except UnicodeDecodeError as exc:
        raise RequestError(f"input '{C.INPUT_USER_ID}' holds an id that is not UTF-8 ({exc.reason})", "not_utf8") from None
    if (ids == "").any():
        raise RequestError(f"input '{C.INPUT_USER_ID}' holds an empty id at position {int(np.flatnonzero(ids == '')[0])}", "empty_id")
    return ids


def check_k(values: np.ndarray | None, users: int, default: int, limit: int, parameter=None) -> int:
    """Validate the optional ``k`` of one request: an input tensor, or a request parameter.

    Args:
        values: the request's ``k`` tensor, ``[n, 1]`` int64, or None.
        users: the request's number of users.
        default: the build's ``top_k`` (neither given).
        limit: the largest allowed ``k``.
        parameter: the request's KServe parameter ``k`` (``"parameters": {"k": 5}``), or None.

    Raises:
        RequestError: naming the input and the problem.
    """
    if values is None and parameter is not None:
        if isinstance(parameter, bool) or not isinstance(parameter, int):
            raise RequestError(f"parameter '{C.INPUT_K}' must be an integer, got {parameter!r}", "k_dtype")
        values = np.full((users, 1), parameter, dtype=np.int64)
    if values is None:
        return default
    if values.dtype != np.int64:
        raise RequestError(f"input '{C.INPUT_K}' must be INT64, got {values.dtype}", "k_dtype")
    if values.shape != (users, 1):
        raise RequestError(f"input '{C.INPUT_K}' must have shape [{users}, 1] like '{C.INPUT_USER_ID}', got {list(values.shape)}", "k_shape")
    if (values != values[0]).any():
        raise RequestError(f"input '{C.INPUT_K}' must hold one value for every user of a request, got {sorted(set(values.reshape(-1).tolist()))[:5]}", "k_mixed")
    k = int(values[0, 0])
    if not 1 <= k <= limit:
        raise RequestError(f"input '{C.INPUT_K}' is {k}; it must be between 1 and {limit} (the catalog's size, capped at {C.MAX_K})", "k_range")
    return k


def load_summary(name: str, version, seconds: float) -> str:
    """One log line: how long the load took, the process's resident memory, whether TensorFlow is in."""
    status = Path("/proc/self/status").read_text()
    rss_mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
    tensorflow = "imported" if "tensorflow" in sys.modules else "not imported"
    return f"{name} version {version} loaded in {seconds:.2f} s; process RSS {rss_mb:.0f} MB; tensorflow {tensorflow}"


STAGE_SAMPLE = 8  # stage times are recorded for one batch in 8 (each metric call is a round trip to the server)


class TritonPythonModel:
    """Triton's Python-backend contract: ``initialize``, ``execute``, ``finalize``."""

    _batches = 0  # batches run, for the stage-time sample

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        started = time.perf_counter()
        self.pb = pb_utils
        config = json.loads(args["model_config"])
        model_dir = Path(args["model_repository"])
        artifact_path = model_dir / str(args["model_version"]) / "ensemble"
        if is_numpy_tower(artifact_path / TOWER_DIR):
            keep_out("tensorflow")
            warnings.filterwarnings("ignore", message="Tensorflow dtype mappings did not load", category=UserWarning)
        from build_ensemble.serving.runtime import load_ensemble  # imports merlin.dag, which looks for TensorFlow

        try:
            self.ensemble, self.runtime = load_ensemble(artifact_path)
        except RecsysError as exc:
            raise pb_utils.TritonModelException(f"{config['name']}: {exc}") from None
        self.outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.string_ids = next(i for i in config["input"] if i["name"] == C.INPUT_USER_ID)["data_type"] == "TYPE_STRING"
        self.per_item = {o["name"] for o in config["output"] if list(o["dims"]) == [-1]}
        index = self.runtime.index_op(self.ensemble)
        self.default_k, self.max_k = index.top_k, index.max_k
        self.metrics = ModelMetrics(pb_utils, config["name"], str(args["model_version"]))
        # Everything loaded so far lives as long as the model: keep the collector from
        # rescanning it (full collections over TensorFlow's and Feast's heaps cause latency spikes).
        gc.collect()
        gc.freeze()
        pb_utils.Logger.log_info(load_summary(config["name"], args["model_version"], time.perf_counter() - started))

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses: list = [None] * len(requests)
        batches, ks, owners = [], [], []
        for number, request in enumerate(requests):
            try:
                ids = check_user_ids(self._input(request, C.INPUT_USER_ID), self.string_ids)
                k = check_k(self._input(request, C.INPUT_K), len(ids), self.default_k, self.max_k,
                            self._parameters(request).get(C.INPUT_K))
            except RequestError as exc:
                responses[number] = pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
                self.metrics.request("rejected", exc.reason)
                continue
            batches.append(ids)
            ks.append(np.full(len(ids), k, dtype=np.int64))
            owners.append(number)
        if not batches:
            return responses
        try:
            outputs = self._run(np.concatenate(batches), np.concatenate(ks))
        except Exception as exc:  # noqa: BLE001  every request gets an answer, never a traceback
            logger.error("retrieval failed: %s", traceback.format_exc())
            message = str(exc) if isinstance(exc, RecsysError) else f"internal error: {type(exc).__name__}: {exc}"
            for number in owners:
                responses[number] = pb.InferenceResponse(error=pb.TritonError(message, pb.TritonError.INTERNAL))
            self.metrics.request("failed", type(exc).__name__, len(owners))
            return responses
        bounds = np.cumsum([0] + [len(b) for b in batches])
        for number, start, stop, k in zip(owners, bounds[:-1], bounds[1:], ks):
            tensors = [
                self._tensor(name, values[start:stop, : k[0]] if name in self.per_item else values[start:stop])
                for name, values in outputs.items()
            ]
            responses[number] = pb.InferenceResponse(output_tensors=tensors)
        self.metrics.request("ok", count=len(owners))
        fallback = outputs[C.OUTPUT_FALLBACK].reshape(-1).astype(bool)
        partial = outputs[C.OUTPUT_PARTIAL].reshape(-1).astype(bool) if C.OUTPUT_PARTIAL in outputs else fallback & False
        self.metrics.users(int((~fallback).sum()), int(fallback.sum()), int(partial.sum()))
        return responses

    @staticmethod
    def _parameters(request) -> dict:
        """The request's KServe parameters (a JSON object in the Python backend)."""
        text = request.parameters() if hasattr(request, "parameters") else "{}"
        return json.loads(text or "{}")

    def _input(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _run(self, ids: np.ndarray, ks: np.ndarray) -> dict:
        from build_ensemble.serving.runtime import Columns

        columns = {C.USER_ID: ids}
        if (ks != self.default_k).any():
            columns[C.INPUT_K] = ks
        seconds: dict = {}
        table = self.runtime.transform(self.ensemble, Columns(columns), seconds)
        if self._batches % STAGE_SAMPLE == 0:
            self.metrics.stages(seconds)
        self._batches += 1
        return {name: table[name].values for name in self.outputs}

    def _tensor(self, name: str, values: np.ndarray):
        dtype = self.outputs[name]
        if dtype == np.object_:  # BYTES: Triton sends bytes
            array = np.array([v.encode() if isinstance(v, str) else v for v in values.reshape(-1)], dtype=object)
            array = array.reshape(values.shape)
        else:
            array = values.astype(dtype, copy=False)
        return self.pb.Tensor(name, np.ascontiguousarray(array))

    def finalize(self) -> None:
        self.metrics.close()
        self.ensemble = None
