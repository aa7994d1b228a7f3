"""Keeps packages a serving process never needs out of it (no merlin import here: it must run first)."""

from __future__ import annotations

import importlib.abc
import sys


class _KeptOut(importlib.abc.MetaPathFinder):
    """Refuses to import the named top-level packages, as if they were not installed."""

    def __init__(self, packages: tuple):
        self.packages = frozenset(packages)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.packages:
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of this serving process)", name=name)
        return None


def keep_out(*packages: str) -> None:
    """Make ``packages`` unimportable in this process from now on (those not imported yet).

    Merlin imports TensorFlow only to register its dtypes, and only if it imports
    (``merlin.dtypes.mappings.tf``); a process serving the NumPy tower never needs it, and it
    costs about 350 MB and 2.5 s of model load.
    """
    sys.meta_path.insert(0, _KeptOut(tuple(p for p in packages if p not in sys.modules)))
