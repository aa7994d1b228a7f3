"""What runs inside tritonserver: the Python-backend model, the graph runtime and its operators.

Nothing here imports a build-time module (data sources, workflow fitting, training,
evaluation, export, publishing); ``constants`` and ``errors`` are the only package modules it
uses. ``import-linter`` enforces this (``pyproject.toml``, run by ``make test``).

Modules, in the order a request meets them: ``model`` (``TritonPythonModel``; ``imports``
keeps TensorFlow out of its process when the NumPy tower serves), ``runtime`` (runs the
graph), ``ops`` (its operators), ``online_store`` (Feast reads), ``encoding`` (the fitted
workflow's user-side operators), ``tower`` (the NumPy query tower), ``index`` (FAISS search).
"""


def __getattr__(name: str):
    # Repositories exported before this package existed import ``TritonPythonModel`` from
    # here and pickle operators under module paths that are gone: refuse them in one line.
    if name == "TritonPythonModel":
        raise ImportError(
            "this model version was exported by an older build-ensemble (before build_ensemble.serving "
            "was a package); re-export it with `build-ensemble export --out BUILD` or rebuild it"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
