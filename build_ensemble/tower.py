"""Copy a trained query tower into NumPy (``serving.tower.NumpyTower``) and check it against TensorFlow.

The trained Merlin encoder is ``embeddings (concatenated in sorted feature order) -> Dense
layers (ReLU, last linear) -> optional L2 normalization``; its weights are copied out and the
build checks the result against TensorFlow on every user before using it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def extract(encoder) -> NumpyTower:
    """Copy the weights of a trained Merlin ``Encoder`` (query or item tower).

    Raises:
        UnsupportedTower: for list (multi-hot) inputs, activations other than ReLU/linear,
            or layers that carry weights this module does not know.
    """
    tables, layers, normalize = {}, [], False
    for layer in _walk(encoder):
        kind = type(layer).__name__
        if kind == "EmbeddingTable":
            if layer.col_schema.is_list:
                raise UnsupportedTower(f"list feature {layer.col_schema.name} (mean-combined) is not reproduced")
            tables[layer.col_schema.name] = layer.weights[0].numpy().astype(np.float32)
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
    return NumpyTower(sorted(tables), tables, layers, normalize)


def compile_tower(encoder, inputs: dict, reference: np.ndarray, folder: str | Path, tolerance: float = 1e-4) -> dict:
    """Extract the NumPy tower, check it against TensorFlow's output, and save it if it agrees.

    Args:
        encoder: the trained query encoder.
        inputs: ``{feature: [n] int64}`` encoded features of every user.
        reference: ``[n, dim]`` float32 TensorFlow embeddings of the same users.
        folder: where to save the tower.
        tolerance: largest absolute difference accepted.

    Returns:
        ``{"runtime": "numpy", "max_abs_diff": d}`` when saved, else
        ``{"runtime": "tensorflow", "reason": ...}`` (serving then runs the SavedModel).
    """
    try:
        tower = extract(encoder)
    except UnsupportedTower as exc:
        return {"runtime": "tensorflow", "reason": str(exc)}
    difference = float(np.abs(tower(inputs) - reference).max())
    if difference > tolerance:
        return {"runtime": "tensorflow", "reason": f"max abs difference {difference:.2e} > {tolerance:.0e}"}
    tower.save(folder)
    return {"runtime": "numpy", "max_abs_diff": difference}
