"""A real MovieLens-100K build and a real tritonserver serving it, shared by the integration tests."""

import pytest

from build_ensemble.config import make_config
from build_ensemble.pipeline import build
from build_ensemble.server.launch import ServerSpec, TritonServer

from ..conftest import free_ports


@pytest.fixture(scope="session")
def movielens_build(tmp_path_factory):
    """MovieLens-100K on the temporal split, whose defaults add the recent-item features: the
    served path then carries per-user history from Feast to the query tower."""
    root = tmp_path_factory.mktemp("movielens")
    config = make_config(
        overrides={
            "dataset": "movielens-100k",
            "split": "temporal",
            "epochs": 3,
            "index": "flat",
            "out": str(root / "artifacts"),
            "feature_repo": str(root / "feature_repo"),
            "repository": str(root / "model_repository"),
        }
    )
    return build(config)


def server_spec(repository, state_dir, feature_repo=None) -> ServerSpec:
    http, grpc, metrics = free_ports(3)
    return ServerSpec(
        repository=str(repository),
        feature_repo=str(feature_repo) if feature_repo else None,
        state_dir=str(state_dir),
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
    )


@pytest.fixture(scope="session")
def served(movielens_build, tmp_path_factory):
    """A tritonserver on the build's repository; the models find the feature repo beside it."""
    spec = server_spec(movielens_build.repository, tmp_path_factory.mktemp("serve"))
    with TritonServer(spec):
        yield spec
