"""A stand-in for ``triton_python_backend_utils``, the module Triton's Python backend provides to
models, with the parts this package uses (tensors, responses, errors, BLS requests)."""

import json
import sys
import threading
import types

import numpy as np
import pytest


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG = range(4)

    def __init__(self, message: str, code: int = 0):
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error_value = list(output_tensors or []), error

    def has_error(self) -> bool:
        return self.error_value is not None

    def error(self):
        return self.error_value


class InferenceRequest:
    """A request handed to ``execute`` (``inputs``) or sent through BLS (``exec``)."""

    answer = None  # what ``exec`` returns: set by a test

    def __init__(self, inputs, requested_output_names=(), model_name="", parameters=None):
        self.inputs, self.requested_output_names, self.model_name = list(inputs), list(requested_output_names), model_name
        self._parameters = json.dumps(parameters or {})

    def parameters(self) -> str:
        return self._parameters

    def exec(self):
        return type(self).answer(self) if callable(type(self).answer) else type(self).answer


class TritonModelException(Exception):
    pass


class MetricFamily:
    """Custom metrics: families by name, each series keeps its value (and observations)."""

    COUNTER, GAUGE, HISTOGRAM = range(3)
    families: dict = {}

    def __init__(self, name, description, kind):
        self.name, self.kind, self.series = name, kind, []
        type(self).families[name] = self

    def Metric(self, labels, buckets=None):  # noqa: N802  (Triton's spelling)
        metric = _Metric(labels, buckets)
        self.series.append(metric)
        return metric


class _Metric:
    def __init__(self, labels, buckets):
        self.labels, self.buckets, self.value, self.observed = dict(labels), buckets, 0.0, []
        self.threads = set()  # names of the threads that updated it

    def increment(self, value):
        self.value += value
        self.threads.add(threading.current_thread().name)

    def observe(self, value):
        self.observed.append(value)
        self.threads.add(threading.current_thread().name)


def get_input_tensor_by_name(request, name):
    return next((t for t in request.inputs if t.name() == name), None)


def get_output_tensor_by_name(response, name):
    return next((t for t in response.output_tensors if t.name() == name), None)


def triton_string_to_numpy(dtype: str):
    return {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_}[dtype]


@pytest.fixture
def pb_utils(monkeypatch):
    """The stand-in, importable as ``triton_python_backend_utils`` for the test."""
    module = types.ModuleType("triton_python_backend_utils")
    MetricFamily.families = {}
    for value in (Tensor, TritonError, InferenceResponse, InferenceRequest, TritonModelException, MetricFamily,
                  get_input_tensor_by_name, get_output_tensor_by_name, triton_string_to_numpy):
        setattr(module, value.__name__, value)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    InferenceRequest.answer = None
    return module
