"""Faults, missing data and rolling a new model version, against real servers.

Each test works on its own copy of the build's repositories, started through the CLI as a
user would (`build-ensemble serve --background`, `reload`, `stop`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.loadtest import harness as loadtest
from build_ensemble.client import RetrievalClient
from build_ensemble.errors import IntegrityError, ServerError
from build_ensemble.server.launch import TritonServer
from build_ensemble.server.state import read_state

from .conftest import server_spec

CLI = str(Path(sys.executable).parent / "build-ensemble")


def _copy(build, root: Path) -> tuple[Path, Path]:
    shutil.copytree(build.repository, root / "model_repository")
    shutil.copytree(build.feature_repo, root / "feature_repo")
    return root / "model_repository", root / "feature_repo"


def _cli(*args, timeout=300):
    done = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Served:
    """`build-ensemble serve --background` on a copied repository; stopped on exit."""

    def __init__(self, repository: Path, state: Path):
        self.spec = server_spec(repository, state)
        self.state = state

    def __enter__(self):
        _cli("serve", "--repository", self.spec.repository, "--background", "--state-dir", self.state,
             "--http-port", self.spec.http_port, "--grpc-port", self.spec.grpc_port,
             "--metrics-port", self.spec.metrics_port)
        return self

    def __exit__(self, *exc):
        subprocess.run([CLI, "stop", "--state-dir", str(self.state)], capture_output=True, timeout=120)


def _top10(build_out: Path, user: int) -> list:
    users = pd.read_parquet(build_out / C.USER_EMBEDDINGS_FILE)
    items = pd.read_parquet(build_out / C.ITEM_EMBEDDINGS_FILE)
    vector = np.stack(users.loc[users[C.USER_ID] == user, "embedding"])[0]
    scores = np.stack(items["embedding"]) @ vector
    return items[C.ITEM_ID].to_numpy()[np.argsort(-scores, kind="stable")[:10]].tolist()


def test_partly_missing_features_get_defaults_and_the_flag(movielens_build, tmp_path):
    from feast import FeatureStore

    repository, feature_repo = _copy(movielens_build, tmp_path)
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame({
        C.USER_ID: [3, 5000], "age_bucket": [1, None], "gender": [None, "M"], "occupation": ["writer", None],
        "zip_prefix": ["55", None], C.EVENT_TIMESTAMP: [now, now], C.CREATED_TIMESTAMP: [now, now],
    })
    # The build's recent items (temporal split): user 3 keeps its own, the new user 5000 has none yet.
    users = pd.read_parquet(movielens_build.out / C.USER_FEATURES_FILE).set_index(C.USER_ID)
    for column in [c for c in users.columns if c.startswith("recent_item")]:
        rows[column] = pd.array([users.at[3, column], None], dtype="Int64")
    FeatureStore(repo_path=str(feature_repo)).write_to_online_store(C.USER_VIEW, rows)
    spec = server_spec(repository, tmp_path / "state")
    with TritonServer(spec), RetrievalClient(spec.grpc_url) as c:
        partial, new_with_features, complete, unknown = c.recommend([3, 5000, 4, 10**9])
    assert (partial.fallback, partial.partial_features) == (False, True)
    assert (new_with_features.fallback, new_with_features.partial_features) == (False, True)
    assert (complete.fallback, complete.partial_features) == (False, False)
    assert (unknown.fallback, unknown.partial_features) == (True, False)
    assert complete.item_ids == _top10(movielens_build.out, 4)
    assert len(set(partial.item_ids)) == 10


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda repo: (repo / "data" / "online_store.db").unlink(), "online_store.db is missing"),
        (lambda repo: (repo / "data" / "online_store.db").write_bytes(b"not a database" * 100), "cannot be read"),
        (lambda repo: (repo / "data" / "registry.db").unlink(), "registry.db is missing"),
        (lambda repo: (repo / "data" / "registry.db").write_bytes(b"\x00garbage"), "cannot be read from the registry"),
    ],
    ids=["store missing", "store corrupt", "registry missing", "registry corrupt"],
)
def test_a_missing_or_corrupt_feature_store_fails_the_load_with_a_reason(movielens_build, tmp_path, damage, message):
    repository, feature_repo = _copy(movielens_build, tmp_path)
    damage(feature_repo)
    started = time.monotonic()
    with pytest.raises(ServerError, match=message) as error:
        TritonServer(server_spec(repository, tmp_path / "state")).start(timeout=120)
    assert time.monotonic() - started < 100, "no hang"
    assert "Traceback" not in str(error.value)


def test_a_modified_repository_is_refused_before_the_server_starts(movielens_build, tmp_path):
    repository, _ = _copy(movielens_build, tmp_path)
    pickle = next((repository / C.MODEL_NAME / "1" / "ensemble").glob("*.pkl"))
    pickle.write_bytes(pickle.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError, match=f"{pickle.name} differs from its checksum"):
        TritonServer(server_spec(repository, tmp_path / "state")).start()
    assert not (tmp_path / "state" / "tritonserver.log").exists()  # refused before starting
    refused = subprocess.run([CLI, "serve", "--repository", str(repository), "--state-dir", str(tmp_path / "s2")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "modified after the build" in refused.stderr


class Load:
    """c=8 gRPC load with the build's user ids, in a thread, until the block ends."""

    def __init__(self, served: Served, out: Path):
        self.stop = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(target=lambda: self.result.setdefault("level", loadtest.run_level(
            served.spec.grpc_url, "grpc", loadtest.UserIds(out), concurrency=8, duration=600, stop=self.stop)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)

    @property
    def level(self):
        return self.result["level"]


def _wait_until_answering(spec, seconds: float) -> float:
    """Seconds until 20 requests in a row succeed."""
    started = time.monotonic()
    streak = 0
    with RetrievalClient(spec.grpc_url, timeout=10) as c:
        while streak < 20:
            assert time.monotonic() - started < seconds, "the service did not recover"
            try:
                c.recommend([3])
                streak += 1
            except Exception:  # noqa: BLE001  still recovering
                streak = 0
                time.sleep(0.2)
    return time.monotonic() - started


def _stubs(server_pid: int) -> list:
    found = subprocess.run(["pgrep", "-P", str(server_pid), "-f", "triton_python_backend_stub"],
                           capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_a_killed_backend_process_or_server_is_recovered_under_load(movielens_build, tmp_path):
    """Triton 2.51 neither restarts a killed Python-backend process (the model stays READY and
    every request fails with "Stub process ... is not healthy") nor always survives it (it
    may abort on a held IPC lock). The serve process reloads the model in the first case and
    restarts the server in the second; either way the service answers again."""
    repository, _ = _copy(movielens_build, tmp_path)
    with Served(repository, tmp_path / "state") as served:
        with Load(served, movielens_build.out) as load:
            time.sleep(3)
            server_pid = read_state(served.state)["pid"]
            before = _stubs(server_pid)
            os.kill(before[0], signal.SIGKILL)
            time.sleep(1)
            backend_recovery = _wait_until_answering(served.spec, 90)
            deadline = time.monotonic() + 90  # the watchdog reloaded the model: a new backend process
            while not (len(_stubs(server_pid)) == len(before) and before[0] not in _stubs(server_pid)):
                assert time.monotonic() < deadline, f"backend processes {_stubs(server_pid)}, before {before}"
                time.sleep(0.5)
            os.kill(read_state(served.state)["pid"], signal.SIGKILL)
            time.sleep(1)
            server_recovery = _wait_until_answering(served.spec, 120)
        level = load.level
        state = read_state(served.state)
    assert state["pid"] != server_pid  # a new server process
    assert level.ok > 0 and sum(level.errors.values()) > 0  # the outages were real and measured
    print(f"recovered in {backend_recovery:.1f} s (backend) and {server_recovery:.1f} s (server); "
          f"load: {level.ok} ok, errors {level.errors}")


def test_rolling_a_new_version_under_load_fails_no_request(movielens_build, tmp_path):
    """A new build written as version 2 into the served repository (feature repository
    rewritten in place) and loaded with `build-ensemble reload` under c=8 load."""
    repository, feature_repo = _copy(movielens_build, tmp_path)
    with Served(repository, tmp_path / "state") as served:
        with Load(served, movielens_build.out) as load:
            _cli("build", "--dataset", "movielens-100k", "--epochs", "1", "--seed", "7", "--index", "flat",
                 "--model-version", "0", "--out", tmp_path / "out2", "--feature-repo", feature_repo,
                 "--repository", repository, timeout=600)
            assert sorted(p.name for p in (repository / C.MODEL_NAME).iterdir() if p.is_dir()) == ["1", "2"]
            reloaded = _cli("reload", "--state-dir", served.state)
            time.sleep(3)
        level = load.level
        with RetrievalClient(served.spec.grpc_url) as c:
            after = c.recommend([3])[0]
            version = c.last_version
    assert "retrieval: serving version 2" in reloaded
    assert level.errors == {} and level.ok > 100, level
    assert set(level.versions) == {"1", "2"}, level.versions
    assert version == "2" and after.item_ids == _top10(tmp_path / "out2", 3)
    assert json.loads((repository / C.MODEL_NAME / "2" / C.MANIFEST_FILE).read_text())["model_version"] == 2


@pytest.mark.parametrize("taken", ["metrics", "grpc"])
def test_a_taken_port_fails_serve_in_one_line_and_starts_nothing(movielens_build, tmp_path, taken):
    """A taken metrics port used to print "ready" and then crash-loop; a taken gRPC port failed
    after 8 s with "CudaDriverHelper has not been initialized"."""
    import socket

    spec = server_spec(movielens_build.repository, tmp_path / "state")
    port = spec.metrics_port if taken == "metrics" else spec.grpc_port
    ports = ["--http-port", str(spec.http_port), "--grpc-port", str(spec.grpc_port), "--metrics-port", str(spec.metrics_port)]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        for background in ([], ["--background"]):
            started = time.monotonic()
            result = subprocess.run([CLI, "serve", "--repository", str(movielens_build.repository), *ports,
                                     "--state-dir", str(tmp_path / "state"), *background],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 2, result
            name = {"metrics": "metrics", "grpc": "gRPC"}[taken]
            assert result.stderr.strip().splitlines() == [
                f"error: the {name} port 127.0.0.1:{port} is in use (Address already in use): stop what listens there "
                f"or choose another --{taken}-port"]
            assert "ready" not in result.stdout and time.monotonic() - started < 60
    assert not (tmp_path / "state" / "tritonserver.log").exists()


def _metric(spec, name: str, **labels) -> float:
    """The value of one series on Triton's metrics port (0 when it is not there yet)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{spec.host}:{spec.metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_an_operator_can_alert_on(movielens_build, tmp_path):
    """The watchdog sends no inference (an idle server's success count stays still), rejected
    requests are counted as rejected, and the model's own metrics are on /metrics."""
    import urllib.error
    import urllib.request

    repository, _ = _copy(movielens_build, tmp_path)
    with Served(repository, tmp_path / "state") as served:
        spec = served.spec
        idle = _metric(spec, "nv_inference_request_success", model=C.MODEL_NAME)
        time.sleep(10)  # five watchdog looks
        assert _metric(spec, "nv_inference_request_success", model=C.MODEL_NAME) == idle
        body = json.dumps({"inputs": [{"name": "user_id", "shape": [1, 1], "datatype": "INT64", "data": [-1]}]}).encode()
        for _ in range(10):
            request = urllib.request.Request(f"http://{spec.http_url}/v2/models/{C.MODEL_NAME}/infer", data=body,
                                             method="POST", headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=30)
        with RetrievalClient(spec.grpc_url) as client:
            client.recommend([3, 10**9])
        series = [("retrieval_requests_total", {"outcome": "rejected", "reason": "negative_id"}),
                  ("retrieval_requests_total", {"outcome": "ok"}),
                  ("retrieval_users_total", {"outcome": "ranked"}), ("retrieval_users_total", {"outcome": "fallback"})]
        series += [("retrieval_stage_seconds_count", {"stage": s}) for s in ("features", "encode", "tower", "index")]
        expected = [10, 1, 1, 1, 1, 1, 1, 1]

        def values() -> list:
            return [_metric(spec, name, **labels) for name, labels in series]

        deadline = time.monotonic() + 30  # each instance sends its counts from a thread, within FLUSH_S
        while values() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert values() == expected


def test_the_control_plane_needs_the_key_and_reload_still_works(movielens_build, tmp_path):
    """Anyone who reaches the port can infer; only a holder of <state-dir>/control.key can unload."""
    import stat

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repository, _ = _copy(movielens_build, tmp_path)
    with Served(repository, tmp_path / "state") as served:
        spec = served.spec
        key_file = tmp_path / "state" / "control.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_text()) == 64
        for client in (httpclient.InferenceServerClient(spec.http_url), grpcclient.InferenceServerClient(spec.grpc_url)):
            with pytest.raises(InferenceServerException) as refused:
                client.unload_model(C.MODEL_NAME)
            assert "triton-control-key" in str(refused.value.message()) or "restricted" in str(refused.value.message()).lower()
            with pytest.raises(InferenceServerException):
                client.unload_model(C.MODEL_NAME, headers={"triton-control-key": "guess"})
            assert client.is_model_ready(C.MODEL_NAME)  # health stays open
        with RetrievalClient(spec.grpc_url) as c:
            assert not c.recommend([3])[0].fallback  # inference stays open
        printed = _cli("reload", "--state-dir", tmp_path / "state")
        assert f"{C.MODEL_NAME}: serving version 1" in printed


def test_the_liveness_check_fails_when_the_backend_process_died(movielens_build, tmp_path):
    """What the Kubernetes liveness probe runs: green on a healthy server, red once the model's
    backend process is killed (while /v2/health/live stays green)."""
    import urllib.request

    repository, _ = _copy(movielens_build, tmp_path)
    spec = server_spec(repository, tmp_path / "state")
    check = [sys.executable, "-m", "build_ensemble.server.liveness", "--url", spec.http_url]
    with TritonServer(spec) as server:
        live = subprocess.run([*check, "--server-pid", str(server.pid)], capture_output=True, text=True, timeout=60)
        assert live.returncode == 0 and live.stdout.startswith("live:"), live
        os.kill(_stubs(server.pid)[0], signal.SIGKILL)
        time.sleep(2)
        with urllib.request.urlopen(f"http://{spec.http_url}/v2/health/live", timeout=5) as response:
            assert response.status == 200  # Triton's own liveness does not notice
        dead = subprocess.run([*check, "--server-pid", str(server.pid)], capture_output=True, text=True, timeout=60)
        assert dead.returncode == 1
        assert dead.stderr.strip() == (f"not live: model {C.MODEL_NAME} is ready but only 0 of its 1 backend processes "
                                       f"run (Triton does not restart them)")
