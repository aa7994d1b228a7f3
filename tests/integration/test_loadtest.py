"""A short smoke of the load-test harness and perf_analyzer against the test server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from build_ensemble import constants as C
from build_ensemble.loadtest import harness as loadtest
from build_ensemble.errors import ConfigError


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_closed_loop_level_counts_every_request(served, movielens_build, protocol):
    ids = loadtest.UserIds(movielens_build.out, unknown_share=0.25)
    url = served.grpc_url if protocol == "grpc" else served.http_url
    result = loadtest.run_level(url, protocol, ids, concurrency=2, requests=60)
    assert (result.requests, result.ok, result.errors) == (60, 60, {})
    assert result.rps > 0 and 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert result.models[C.MODEL_NAME]["requests"] >= 60


def test_open_loop_rate_and_errors_by_kind(served, movielens_build):
    ids = loadtest.UserIds(movielens_build.out)
    result = loadtest.run_level(served.grpc_url, "grpc", ids, rate=40, duration=1.5)
    assert 50 <= result.requests <= 62 and not result.errors
    wrong = loadtest.run_level(served.grpc_url, "grpc", ids, concurrency=1, requests=3, model="missing")
    assert wrong.ok == 0 and sum(wrong.errors.values()) == 3


def test_user_ids_mix_known_and_unknown(movielens_build):
    ids = loadtest.UserIds(movielens_build.out, unknown_share=0.3, seed=1).sample(2000)
    unknown = (ids > 943).mean()
    assert 0.25 < unknown < 0.35
    with pytest.raises(ConfigError, match="unknown_share"):
        loadtest.UserIds(movielens_build.out, unknown_share=2)


@pytest.mark.parametrize("url", ["10.1.2.3:8001", "192.168.0.1:80"])
def test_only_loopback_is_targeted(url, movielens_build):
    with pytest.raises(ConfigError, match="loopback"):
        loadtest.run_level(url, "grpc", loadtest.UserIds(movielens_build.out), concurrency=1, requests=1)


def test_cli_writes_csv_json_png_and_runs_perf_analyzer(served, movielens_build, tmp_path):
    cli = str(Path(sys.executable).parent / "build-ensemble")
    result = subprocess.run(
        [cli, "loadtest", "--out", str(movielens_build.out), "--protocol", "grpc", "http",
         "--grpc-url", served.grpc_url, "--http-url", served.http_url, "--concurrency", "1", "2",
         "--requests", "30", "--results", str(tmp_path), "--perf-analyzer", "--perf-measurement-ms", "1000",
         "--perf-stability", "1000"],  # a smoke test of the wiring, not a measurement
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    levels = json.loads((tmp_path / "loadtest.json").read_text())["levels"]
    assert [(l["protocol"], l["concurrency"], l["ok"]) for l in levels] == [
        ("grpc", 1, 30), ("grpc", 2, 30), ("http", 1, 30), ("http", 2, 30)
    ]
    assert (tmp_path / "loadtest.csv").read_text().count("\n") == 5
    assert (tmp_path / "loadtest.png").read_bytes()[:4] == b"\x89PNG"
    perf = json.loads((tmp_path / "perf_analyzer.json").read_text())["levels"]
    assert len(perf) == 4 and all(level["rps"] > 0 for level in perf)
    assert "perf_analyzer grpc c=1" in result.stdout
