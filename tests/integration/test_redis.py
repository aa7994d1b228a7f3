"""The ensemble served from a Redis online store: a real redis-server on loopback.

The build materializes into Redis; the server reads from it; Redis going away fails requests
fast with a clear error, and they succeed again when it is back, without a server restart.
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from build_ensemble.client import RetrievalClient
from build_ensemble.server.launch import TritonServer

from ..conftest import free_port
from .conftest import server_spec
from .test_reliability import _top10

CLI = str(Path(sys.executable).parent / "build-ensemble")


class RedisServer:
    """``redis-server`` on 127.0.0.1, saving its data to ``folder`` on shutdown."""

    def __init__(self, folder: Path, port: int):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found: `make test` installs it (Debian package redis-server)")
        self.command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                        "--save", "3600 1", "--appendonly", "no", "--protected-mode", "yes"]
        self.port = port
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Redis saves its data (save points set) and exits
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="module")
def redis_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis")
    redis = RedisServer(root, free_port()).start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    done = subprocess.run(
        [CLI, "build", "--dataset", "movielens-100k", "--epochs", "1", "--index", "flat", "--online-store", "redis",
         "--redis-url", url, "--out", str(root / "artifacts"), "--feature-repo", str(root / "feature_repo"),
         "--repository", str(root / "model_repository")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield root, redis
    redis.stop()


def test_the_feature_repo_points_at_redis_and_feast_reads_it(redis_build):
    root, redis = redis_build
    yaml_text = (root / "feature_repo" / "feature_store.yaml").read_text()
    assert "type: redis" in yaml_text and f'connection_string: "127.0.0.1:{redis.port},db=0"' in yaml_text
    assert not (root / "feature_repo" / "data" / "online_store.db").exists()
    listed = subprocess.run([str(Path(sys.executable).parent / "feast"), "feature-views", "list"],
                            cwd=root / "feature_repo", capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "user_features" in listed.stdout


def test_served_from_redis_and_recovers_when_redis_comes_back(redis_build):
    root, redis = redis_build
    expected = _top10(root / "artifacts", 3)
    spec = server_spec(root / "model_repository", root / "state")
    with TritonServer(spec), RetrievalClient(spec.grpc_url, timeout=10) as c:
        known, unknown = c.recommend([3, 10**9])
        assert known.item_ids == expected and not known.fallback and unknown.fallback
        redis.stop()
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as error:
            c.recommend([3])
        assert time.monotonic() - started < 5, "fails fast"
        assert "feature store lookup in view user_features failed" in error.value.message()
        assert "Traceback" not in error.value.message()
        redis.start()
        again = c.recommend([3])[0]
    assert again.item_ids == expected and not again.fallback


def test_a_build_with_redis_down_fails_with_a_clear_error(tmp_path):
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [CLI, "build", "--dataset", "movielens-100k", "--epochs", "1", "--index", "flat", "--online-store", "redis",
         "--redis-url", f"redis://127.0.0.1:{port}/0", "--out", str(tmp_path / "a"),
         "--feature-repo", str(tmp_path / "f"), "--repository", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "online store (redis)" in done.stderr and "unreachable" in done.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "a").exists()  # nothing half-written


def test_repeated_reads_leave_the_reader_unchanged(redis_build):
    """Feast's Redis online_read appends to the feature list it is given; ours must not grow."""
    import numpy as np

    from build_ensemble import constants as C
    from build_ensemble.serving.online_store import OnlineReader, open_store

    root, _ = redis_build
    store = open_store(root / "feature_repo")
    features = ["age_bucket", "gender", "occupation", "zip_prefix"]
    reader = OnlineReader(store, C.USER_VIEW, C.USER_ID, features)
    first, found = reader.read(np.array([3, 10**9]))
    for _ in range(50):
        again, _ = reader.read(np.array([3, 10**9]))
    assert reader.features == features
    assert found.tolist() == [True, False] and set(again) == set(features)
    assert [again[f][0] for f in features] == [first[f][0] for f in features]
