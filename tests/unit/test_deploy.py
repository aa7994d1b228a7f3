"""deploy/: the Kubernetes manifests against the Kubernetes API schemas (no cluster needed)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31"


def _documents() -> list:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [(name, d) for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


def _kind(kind: str) -> dict:
    return next(d for _, d in _documents() if d["kind"] == kind)


def test_the_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("name, document", _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_is_valid_against_the_schema(name, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("change", [{"replicas": "three"}, {"replicaz": 3}], ids=["wrong type", "misspelled field"])
def test_a_broken_manifest_is_caught(change):
    broken = {**_kind("Deployment"), "spec": {**_kind("Deployment")["spec"], **change}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_triton_is_replicated_probed_and_reads_the_shared_volume():
    deployment = _kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["exec"]["command"][:3] == ["python", "-m", "build_ensemble.server.liveness"]
    assert {"cpu", "memory"} <= set(triton["resources"]["requests"])
    args = dict(a.removeprefix("--").split("=", 1) for a in triton["args"])
    mount = triton["volumeMounts"][0]["mountPath"]
    assert args["model-repository"].startswith(mount)
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["BUILD_ENSEMBLE_FEATURE_REPO"].startswith(mount)
    assert {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "FEAST_USAGE", "TRITON_CONTROL_KEY"} <= set(env)
    restricted = "model-repository,shared-memory,logging,trace:triton-control-key=$(TRITON_CONTROL_KEY)"
    assert args["grpc-restricted-protocol"] == restricted
    # Triton 23.08 cannot restrict HTTP: the Service must not expose it.
    service = next(d for _, d in _documents() if d["kind"] == "Service" and d["metadata"]["name"] == "triton")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    job = _kind("Job")["spec"]["template"]["spec"]["containers"][0]
    job_args = dict(a.removeprefix("--").split("=", 1) for a in job["args"])
    assert job_args["repository"] == args["model-repository"]
    assert job_args["feature-repo"] == env["BUILD_ENSEMBLE_FEATURE_REPO"]
    assert job_args["tower-backend"] == "tensorflow" and job_args["online-store"] == "redis"
    redis = next(d for _, d in _documents() if d["kind"] == "Service" and d["metadata"]["name"] == "redis")
    assert job_args["redis-url"] == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"


def test_the_job_arguments_are_options_of_the_build():
    from build_ensemble.cli import make_parser

    job = _kind("Job")["spec"]["template"]["spec"]["containers"][0]
    parsed = make_parser().parse_args([*job["command"][1:], *job["args"]])
    assert parsed.command == "build"
