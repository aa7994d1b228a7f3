"""A Python-backend stand-in for the TensorFlow-backend ``0_query_tower`` of a GPU repository.

It has the TensorFlow config's name, inputs and outputs and runs the same SavedModel, so the
graph's BLS call (``serving.ops.QueryTowerTriton``) runs on a CPU server without a TensorFlow
backend. ``STANDIN_FAIL=1`` in the server's environment makes it answer with an error.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import tensorflow as tf

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"] / "model.savedmodel"
        self.signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        self.inputs = [i["name"] for i in config["input"]]
        self.output = config["output"][0]["name"]
        self.tf = tf

    def execute(self, requests):
        responses = []
        for request in requests:
            if os.environ.get("STANDIN_FAIL") == "1":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("the tower stand-in was told to fail")))
                continue
            feeds = {name: self.tf.constant(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1))
                     for name in self.inputs}
            embedding = self.signature(**feeds)[self.output].numpy().astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, embedding)]))
        return responses
