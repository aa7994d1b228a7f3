"""Triton's floor: a Python-backend model with the retrieval model's inputs and outputs that
returns the same fixed ten items for every user. What it costs is what any Python-backend model
costs on this tritonserver (gRPC, the backend's shared-memory hop, Python); the benchmark
serves it beside ours so that our own work reads as the difference.

Copied into a repository as ``floor/1/model.py`` by ``scripts/bench_serving.py``.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

K = 10


class TritonPythonModel:
    def initialize(self, args):
        self.ids = np.arange(K, dtype=np.int64)[None, :]
        self.scores = np.linspace(1, 0, K, dtype=np.float32)[None, :]

    def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "user_id").as_numpy().shape[0]
            flags = np.zeros((n, 1), dtype=bool)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("item_ids", np.repeat(self.ids, n, axis=0)),
                pb_utils.Tensor("scores", np.repeat(self.scores, n, axis=0)),
                pb_utils.Tensor("fallback", flags),
                pb_utils.Tensor("partial_features", flags),
            ]))
        return responses
