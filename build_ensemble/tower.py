"""Copy a trained query tower into NumPy (``serving.tower.NumpyTower``) and check it against TensorFlow.

The trained Merlin encoder is ``embeddings (concatenated in sorted feature order) -> Dense
layers (ReLU, last linear) -> optional L2 normalization``; its weights are copied out and the
build checks the result against TensorFlow on every user before using it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble.serving.encoding import to_ragged
from build_ensemble.serving.tower import NumpyTower

ACTIVATIONS = ("relu", "linear")


class UnsupportedTower(ValueError):
    """The encoder holds a layer this module does not reproduce (the SavedModel is used instead)."""


LEAVES = ("EmbeddingTable", "_Dense")


def _walk(layer):
    """Layers in call order, not descending into the leaves this module reads whole."""
    for child in getattr(layer, "layers", []):
        yield child
        if type(child).__name__ not in LEAVES:
            yield from _walk(child)


def extract(encoder, continuous: tuple = ()) -> NumpyTower:
    """Copy the weights of a trained Merlin ``Encoder`` (query or item tower).

    Args:
        encoder: the trained encoder.
        continuous: names of its continuous inputs (concatenated as they come).

    Raises:
        UnsupportedTower: for activations other than ReLU/linear, combiners other than mean,
            or layers that carry weights this module does not know.
    """
    tables, kinds, layers, normalize = {}, {name: "continuous" for name in continuous}, [], False
    for layer in _walk(encoder):
        kind = type(layer).__name__
        if kind == "EmbeddingTable":
            name = layer.col_schema.name
            if layer.col_schema.is_list:
                if layer.sequence_combiner != "mean":
                    raise UnsupportedTower(f"list feature {name}: combiner {layer.sequence_combiner!r} is not reproduced")
                kinds[name] = "list"
            tables[name] = layer.weights[0].numpy().astype(np.float32)
        elif kind == "_Dense":
            activation = layer.dense.activation.__name__
            if activation not in ACTIVATIONS:
                raise UnsupportedTower(f"activation {activation} is not reproduced")
            kernel, bias = (w.numpy().astype(np.float32) for w in layer.dense.weights)
            layers.append((kernel, bias, activation))
        elif kind == "L2Norm":
            normalize = True
        elif layer.weights and kind not in ("ParallelBlock", "SequentialBlock"):
            raise UnsupportedTower(f"layer {kind} ({layer.name}) holds weights this module does not reproduce")
    return NumpyTower(sorted([*tables, *continuous]), tables, layers, normalize, kinds)


def numpy_inputs(encoded: pd.DataFrame, list_features: tuple = ()) -> dict:
    """The NumPy tower's inputs from an encoded table (``workflow.encode``): a list feature ``f``
    as ``f__values`` and ``f__offsets``."""
    inputs = {}
    for column in encoded.columns:
        if column in list_features:
            values, offsets = to_ragged(encoded[column].to_numpy())
            inputs[f"{column}__values"], inputs[f"{column}__offsets"] = values.astype(np.int64), offsets
        else:
            inputs[column] = encoded[column].to_numpy()
    return inputs


def compile_tower(encoder, inputs: dict, reference: np.ndarray, folder: str | Path, continuous: tuple = (),
                  tolerance: float = 1e-4) -> dict:
    """Extract the NumPy tower, check it against TensorFlow's output, and save it if it agrees.

    Args:
        encoder: the trained query encoder.
        inputs: the encoded features of every user (:func:`numpy_inputs`).
        reference: ``[n, dim]`` float32 TensorFlow embeddings of the same users.
        folder: where to save the tower.
        continuous: names of the continuous inputs.
        tolerance: largest absolute difference accepted.

    Returns:
        ``{"runtime": "numpy", "max_abs_diff": d}`` when saved, else
        ``{"runtime": "tensorflow", "reason": ...}`` (serving then runs the SavedModel).
    """
    try:
        tower = extract(encoder, continuous)
    except UnsupportedTower as exc:
        return {"runtime": "tensorflow", "reason": str(exc)}
    difference = float(np.abs(tower(inputs) - reference).max())
    if difference > tolerance:
        return {"runtime": "tensorflow", "reason": f"max abs difference {difference:.2e} > {tolerance:.0e}"}
    tower.save(folder)
    return {"runtime": "numpy", "max_abs_diff": difference}
