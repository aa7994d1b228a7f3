"""The query tower as plain NumPy, loaded by the serving graph.

The build copies the trained Merlin encoder's weights out (``build_ensemble.tower``) and
checks the result against TensorFlow on every user before the repository uses it. Served,
it costs tens of microseconds per call against about 1 ms of TensorFlow's eager dispatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOWER_DIR = "query_tower"  # in an exported graph's folder: the NumPy tower or the SavedModel
WEIGHTS_FILE = "tower.npz"
LAYOUT_FILE = "tower.json"


def is_numpy_tower(folder: str | Path) -> bool:
    """Whether ``folder`` holds a NumPy tower (rather than a SavedModel)."""
    return (Path(folder) / LAYOUT_FILE).is_file()


@dataclass
class NumpyTower:
    """A query tower in NumPy.

    Attributes:
        features: input names in concatenation order (sorted, as Merlin's ConcatFeatures).
        tables: ``{feature: [cardinality, dim] float32}`` embedding tables (categorical and list features).
        layers: ``[(kernel [in, out] float32, bias [out] float32, activation)]``.
        normalize: L2-normalize the output.
        kinds: ``{feature: "list" | "continuous"}``; features not named are categorical.
    """

    features: list
    tables: dict
    layers: list = field(default_factory=list)
    normalize: bool = False
    kinds: dict = field(default_factory=dict)

    def __call__(self, inputs: dict) -> np.ndarray:
        """Embed a batch.

        Args:
            inputs: encoded features by the tower signature's names: ``{f: [n] int64}`` codes of a
                categorical feature, ``{f: [n] float32}`` a continuous one, ``{f__values: [m] int64,
                f__offsets: [n + 1] int64}`` a list one (its embeddings are averaged; an empty list
                gives zeros, as Merlin's mean combiner).

        Returns:
            ``[n, dim]`` float32.
        """
        x = np.concatenate([self._part(f, inputs) for f in self.features], axis=1)
        for kernel, bias, activation in self.layers:
            x = x @ kernel + bias
            if activation == "relu":
                np.maximum(x, 0, out=x)
        if self.normalize:
            x = x / np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True), 1e-12))
        return x.astype(np.float32, copy=False)

    def _part(self, feature: str, inputs: dict) -> np.ndarray:
        kind = self.kinds.get(feature, "categorical")
        if kind == "continuous":
            return np.asarray(inputs[feature], dtype=np.float32).reshape(-1, 1)
        table = self.tables[feature]
        if kind == "categorical":
            return table[np.asarray(inputs[feature], dtype=np.int64)]
        values = np.asarray(inputs[f"{feature}__values"], dtype=np.int64)
        offsets = np.asarray(inputs[f"{feature}__offsets"], dtype=np.int64)
        sums = np.zeros((len(values) + 1, table.shape[1]), dtype=np.float64)
        np.cumsum(table[values], axis=0, out=sums[1:])
        counts = np.diff(offsets)[:, None]
        return ((sums[offsets[1:]] - sums[offsets[:-1]]) / np.maximum(counts, 1)).astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"table_{i}": self.tables[f] for i, f in enumerate(self.features) if f in self.tables}
        for i, (kernel, bias, _) in enumerate(self.layers):
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
        np.savez(folder / WEIGHTS_FILE, **arrays)
        layout = {"features": self.features, "kinds": self.kinds, "activations": [a for _, _, a in self.layers],
                  "normalize": self.normalize}
        (folder / LAYOUT_FILE).write_text(json.dumps(layout, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "NumpyTower":
        folder = Path(folder)
        layout = json.loads((folder / LAYOUT_FILE).read_text())
        with np.load(folder / WEIGHTS_FILE) as arrays:
            tables = {f: arrays[f"table_{i}"] for i, f in enumerate(layout["features"]) if f"table_{i}" in arrays}
            layers = [(arrays[f"kernel_{i}"], arrays[f"bias_{i}"], a) for i, a in enumerate(layout["activations"])]
        return cls(layout["features"], tables, layers, layout["normalize"], layout.get("kinds", {}))
