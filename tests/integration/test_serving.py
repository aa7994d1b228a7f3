"""The served ensemble on a real tritonserver, over gRPC and HTTP."""

import json
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from build_ensemble import constants as C
from build_ensemble.client import RetrievalClient
from build_ensemble.config import make_config
from build_ensemble.export import GraphSpec, export_repository
from build_ensemble.pipeline import build
from build_ensemble.server.launch import TritonServer

from .conftest import server_spec

PROTOCOLS = ["grpc", "http"]


def client(served, protocol):
    return RetrievalClient(served.grpc_url if protocol == "grpc" else served.http_url, protocol)


def offline_top10(out: Path, k: int = 10) -> dict:
    """``{user: (item ids, scores)}``, the top-k from a build's exported embeddings."""
    users = pd.read_parquet(out / C.USER_EMBEDDINGS_FILE)
    items = pd.read_parquet(out / C.ITEM_EMBEDDINGS_FILE)
    scores = np.stack(users["embedding"]) @ np.stack(items["embedding"]).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    item_ids = items[C.ITEM_ID].to_numpy()
    return {
        int(u): (item_ids[order[row]], scores[row, order[row]]) for row, u in enumerate(users[C.USER_ID])
    }


@pytest.fixture(scope="module")
def offline(movielens_build):
    """Top-10 from the exported embeddings: the served answers must equal it."""
    return offline_top10(movielens_build.out)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_served_top10_equals_offline_for_50_users(served, offline, protocol):
    users = sorted(offline)[::18][:50]
    with client(served, protocol) as c:
        answers = [c.recommend([u])[0] for u in users]
    for user, answer in zip(users, answers):
        ids, scores = offline[user]
        assert not answer.fallback
        assert answer.item_ids == ids.tolist(), user
        np.testing.assert_allclose(answer.scores, scores, atol=1e-4)


def test_random_split_build_without_history_serves_its_offline_top10(tmp_path):
    """The default MovieLens build (random split: no recent-item features) end to end too."""
    config = make_config(overrides={
        "dataset": "movielens-100k", "epochs": 1, "index": "flat", "out": str(tmp_path / "artifacts"),
        "feature_repo": str(tmp_path / "feature_repo"), "repository": str(tmp_path / "model_repository"),
    })
    result = build(config)
    assert not any(f.startswith("recent_item") for f in result.manifest["graph"]["user_features"])
    offline = offline_top10(result.out)
    users = sorted(offline)[::47]
    spec = server_spec(result.repository, tmp_path / "state")
    with TritonServer(spec), RetrievalClient(spec.grpc_url) as c:
        answers = c.recommend(users)
    assert [a.item_ids for a in answers] == [offline[u][0].tolist() for u in users]


def test_a_32_user_request_equals_32_single_requests(served, offline):
    users = sorted(offline)[100:132]
    with client(served, "grpc") as c:
        batch = c.recommend(users)
        singles = [c.recommend([u])[0] for u in users]
    assert [a.user_id for a in batch] == users
    for one, many in zip(singles, batch):
        assert one.item_ids == many.item_ids and one.fallback == many.fallback
        np.testing.assert_allclose(one.scores, many.scores, atol=1e-5)
    assert len({tuple(a.item_ids) for a in batch}) > 1  # each user gets their own list


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_users_get_popular_items_and_the_flag(served, movielens_build, offline, protocol):
    popular = pd.read_parquet(movielens_build.out / C.INDEX_DIR / "popular.parquet")[C.ITEM_ID].head(10).tolist()
    with client(served, protocol) as c:
        answers = c.recommend([5, 10**9, 0, 7])
    assert [a.fallback for a in answers] == [False, True, True, False]
    assert answers[1].item_ids == popular and answers[2].item_ids == popular
    assert answers[0].item_ids == offline[5][0].tolist() and answers[3].item_ids == offline[7][0].tolist()


def test_plain_kserve_v2_json_over_http(served, offline):
    body = json.dumps({"inputs": [{"name": "user_id", "shape": [2, 1], "datatype": "INT64", "data": [3, 4]}]})
    request = urllib.request.Request(
        f"http://{served.http_url}/v2/models/{C.MODEL_NAME}/infer", data=body.encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["item_ids"]["shape"] == [2, 10]
    assert outputs["item_ids"]["data"][:10] == offline[3][0].tolist()
    assert outputs["fallback"]["data"] == [False, False]


def test_the_repositories_can_be_moved(movielens_build, offline, tmp_path):
    """Copies of model_repository/ and feature_repo/ serve the same answers from their new place."""
    moved = tmp_path / "moved"
    shutil.copytree(movielens_build.repository, moved / "model_repository")
    shutil.copytree(movielens_build.feature_repo, moved / "feature_repo")
    spec = server_spec(moved / "model_repository", tmp_path / "state")
    with TritonServer(spec), RetrievalClient(spec.grpc_url) as c:
        assert c.recommend([11])[0].item_ids == offline[11][0].tolist()
    # Not side by side: the documented setting points the models at the feature repository.
    apart = tmp_path / "apart"
    shutil.move(str(moved / "feature_repo"), apart)
    spec = server_spec(moved / "model_repository", tmp_path / "state2", feature_repo=apart)
    with TritonServer(spec), RetrievalClient(spec.grpc_url) as c:
        assert c.recommend([11])[0].item_ids == offline[11][0].tolist()


def test_tensorflow_backend_export_for_gpu_images(movielens_build, tmp_path):
    from google.protobuf import text_format
    import tritonclient.grpc.model_config_pb2 as mc

    models = export_repository(movielens_build.out, tmp_path / "repo", movielens_build.feature_repo,
                               tower_backend="tensorflow")
    assert models == [C.MODEL_NAME, "0_query_tower"]
    tower = tmp_path / "repo" / "0_query_tower"
    assert (tower / "1" / "model.savedmodel" / "saved_model.pb").exists()
    config = text_format.Parse((tower / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.platform == "tensorflow_savedmodel"
    manifest = json.loads((movielens_build.out / C.MANIFEST_FILE).read_text())
    assert sorted(i.name for i in config.input) == sorted(manifest["graph"]["tower_inputs"])
    assert not (tmp_path / "repo" / C.MODEL_NAME / "1" / "ensemble" / "query_tower").exists()


def test_export_writes_another_served_repository_from_the_same_build(movielens_build, tmp_path):
    """`build-ensemble export`: a second repository with other options, no retraining, served."""
    cli = str(Path(sys.executable).parent / "build-ensemble")
    repository = tmp_path / "exported"
    args = ["export", "--out", str(movielens_build.out), "--repository", str(repository), "--index", "hnsw",
            "--top-k", "20", "--with-item-features", "--instances", "2", "--model-version", "0"]
    done = subprocess.run([cli, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"model repository:  {repository.resolve()}  (version 1)" in done.stdout and "index:             hnsw" in done.stdout
    manifest = json.loads((repository / C.MODEL_NAME / "1" / C.MANIFEST_FILE).read_text())
    assert manifest["index"]["kind"] == "hnsw" and manifest["index"]["k"] == 20
    assert manifest["index"]["recall_at_k"] >= 0.95 and manifest["index"]["recall_at_k_item_queries"] >= 0.95
    assert manifest["options"]["top_k"] == 20 and manifest["exported_from"] == str(movielens_build.out.resolve())
    assert "count: 2\n" in (repository / C.MODEL_NAME / "config.pbtxt").read_text()
    assert manifest["metrics"] == movielens_build.metrics  # the build's model, not a new one
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*index"))
    offline = offline_top10(movielens_build.out, k=20)
    users = sorted(offline)[::40]
    with TritonServer(server_spec(repository, tmp_path / "state")) as server, RetrievalClient(server.spec.grpc_url) as c:
        answers = c.recommend(users)
        assert len(backend_stubs(tmp_path / "state")) == 2  # --instances 2
    recall = np.mean([len(set(a.item_ids) & set(offline[u][0].tolist())) / 20 for u, a in zip(users, answers)])
    assert all(len(a.item_ids) == 20 and set(a.item_features) >= {"genres", "title"} for a in answers)
    assert recall >= 0.9, recall


def test_cli_serve_recommend_stop(movielens_build, offline, tmp_path):
    cli = str(Path(sys.executable).parent / "build-ensemble")
    spec = server_spec(movielens_build.repository, tmp_path / "state")
    ports = ["--http-port", str(spec.http_port), "--grpc-port", str(spec.grpc_port), "--metrics-port", str(spec.metrics_port)]
    state = ["--state-dir", str(tmp_path / "state")]
    started = subprocess.run([cli, "serve", "--repository", str(movielens_build.repository), "--background", *ports, *state],
                             capture_output=True, text=True, timeout=200)
    try:
        assert started.returncode == 0, started.stderr
        assert f"gRPC {spec.grpc_url}" in started.stdout
        for protocol, url in (("grpc", spec.grpc_url), ("http", spec.http_url)):
            answer = subprocess.run([cli, "recommend", "--user-id", "3", "--user-id", "77777", "--k", "5",
                                     "--protocol", protocol, "--url", url], capture_output=True, text=True, timeout=60)
            assert answer.returncode == 0, answer.stderr
            printed = json.loads(answer.stdout)
            assert printed[0]["items"] == offline[3][0][:5].tolist() and printed[1]["fallback"] is True
    finally:
        stopped = subprocess.run([cli, "stop", *state], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout


def test_item_features_of_each_candidate(movielens_build, offline, tmp_path):
    """--with-item-features: each candidate's item features come from the item_features view."""
    from build_ensemble.export import GraphSpec

    manifest = json.loads((movielens_build.out / C.MANIFEST_FILE).read_text())
    spec = GraphSpec(**{**manifest["graph"], "with_item_features": True})
    shutil.copytree(movielens_build.feature_repo, tmp_path / "feature_repo")
    export_repository(movielens_build.out, tmp_path / "model_repository", tmp_path / "feature_repo", spec)
    items = pd.read_parquet(movielens_build.out / C.ITEM_FEATURES_FILE).set_index(C.ITEM_ID)
    server = server_spec(tmp_path / "model_repository", tmp_path / "state")
    server.verify = False  # exported here, not by a build: no manifest
    with TritonServer(server), RetrievalClient(server.http_url, "http") as c:
        known, unknown = c.recommend([3, 10**8])
    assert known.item_ids == offline[3][0].tolist()
    assert set(known.item_features) == {"genres", "release_year", "title"}
    for position, item in enumerate(known.item_ids + unknown.item_ids):
        answer = known if position < 10 else unknown
        assert answer.item_features["release_year"][position % 10] == items.loc[item, "release_year"]
        assert answer.item_features["title"][position % 10] == items.loc[item, "title"]
        assert answer.item_features["genres"][position % 10] == "|".join(items.loc[item, "genres"])


def test_the_printed_tritonserver_command_serves_without_the_launcher(movielens_build, offline, tmp_path):
    """`serve --print-command` gives a shell script that a plain process manager can run: run in
    an empty environment, outside the project's launcher, it serves the offline top-10."""
    import os
    import signal
    import time

    cli = str(Path(sys.executable).parent / "build-ensemble")
    spec = server_spec(movielens_build.repository, tmp_path / "state")
    printed = subprocess.run([cli, "serve", "--print-command", "--repository", str(movielens_build.repository),
                              "--http-port", str(spec.http_port), "--grpc-port", str(spec.grpc_port),
                              "--metrics-port", str(spec.metrics_port), "--state-dir", str(tmp_path / "state")],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    script = printed.stdout
    assert script.startswith("#!/bin/sh") and "exec " in script and "--backend-directory=" in script
    assert "export OMP_NUM_THREADS=1" in script and "export LD_LIBRARY_PATH=" in script
    (tmp_path / "tritonserver.sh").write_text(script)
    with open(tmp_path / "plain.log", "w") as log:
        process = subprocess.Popen(["/bin/sh", str(tmp_path / "tritonserver.sh")], env={}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _ready(spec.http_url):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "plain.log").read_text()[-2000:]
            time.sleep(0.5)
        with RetrievalClient(spec.grpc_url) as c:
            answer = c.recommend([11])[0]
        assert answer.item_ids == offline[11][0].tolist()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _python_tower(repository: Path) -> None:
    """Turn the TensorFlow-backend ``0_query_tower`` into the Python-backend stand-in (same name,
    inputs and outputs, same SavedModel); the TensorFlow config's reshape is done by the stand-in."""
    from google.protobuf import text_format
    import tritonclient.grpc.model_config_pb2 as mc

    folder = repository / "0_query_tower"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    config.backend, config.platform = "python", ""
    config.parameters.clear()
    for tensor in config.input:
        tensor.ClearField("reshape")
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copy(Path(__file__).parent / "standins" / "tower_model.py", folder / "1" / "model.py")


def test_the_gpu_repositorys_bls_path_serves_the_offline_top10(movielens_build, offline, tmp_path):
    """--tower-backend tensorflow: the graph calls 0_query_tower through BLS. Served here with a
    Python-backend stand-in running the same SavedModel, the answers equal offline; the
    SavedModel's signature matches the generated TensorFlow config; a failing tower reaches the
    client as one clear error."""
    import os

    import tensorflow as tf
    from google.protobuf import text_format
    import tritonclient.grpc.model_config_pb2 as mc
    from tritonclient.utils import InferenceServerException

    repository = tmp_path / "model_repository"
    export_repository(movielens_build.out, repository, movielens_build.feature_repo, tower_backend="tensorflow")
    config = text_format.Parse((repository / "0_query_tower" / "config.pbtxt").read_text(), mc.ModelConfig())
    signature = tf.saved_model.load(str(repository / "0_query_tower" / "1" / "model.savedmodel")).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    types = {tf.int64: mc.TYPE_INT64, tf.float32: mc.TYPE_FP32}
    assert {i.name: (i.data_type, list(i.dims), list(i.reshape.shape)) for i in config.input} == {
        name: (types[spec.dtype], [1], []) for name, spec in specs.items()}  # [batch, 1] reshaped to the signature's [batch]
    (output, spec), = signature.structured_outputs.items()
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [(output, mc.TYPE_FP32, [int(spec.shape[-1])])]
    _python_tower(repository)
    users = sorted(offline)[::60]
    served = server_spec(repository, tmp_path / "state", feature_repo=movielens_build.feature_repo)
    served.verify = False  # the stand-in replaced files of the exported version
    with TritonServer(served), RetrievalClient(served.grpc_url) as c:
        answers = c.recommend(users)
    for user, answer in zip(users, answers):
        assert answer.item_ids == offline[user][0].tolist(), user
    failing = server_spec(repository, tmp_path / "state2", feature_repo=movielens_build.feature_repo)
    failing.verify = False
    os.environ["STANDIN_FAIL"] = "1"
    try:
        with TritonServer(failing), RetrievalClient(failing.grpc_url) as c, pytest.raises(InferenceServerException) as caught:
            c.recommend([users[0]])
    finally:
        del os.environ["STANDIN_FAIL"]
    assert "query tower model 0_query_tower: the tower stand-in was told to fail" in caught.value.message()
    assert "Traceback" not in caught.value.message()


def test_the_exported_graph_pickles_no_object_by_value(movielens_build):
    """A repository built here (Python 3.11) must load in NVIDIA's images (Python 3.10): the graph
    may reference importable classes and hold plain data, never code pickled by value."""
    import pickletools

    data = (movielens_build.repository / C.MODEL_NAME / "1" / "ensemble" / "ensemble.pkl").read_bytes()
    globals_ = set()
    strings = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "STACK_GLOBAL", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        if opcode.name == "GLOBAL":
            globals_.add(arg)
    # cloudpickle pickles a function or class by value through these helpers
    by_value = {"_make_function", "_make_skeleton_class", "_builtin_type", "_function_setstate", "_class_setstate"}
    assert not by_value & {s for s in strings if isinstance(s, str)}, sorted(by_value & set(strings))
    assert any(isinstance(s, str) and s.startswith("build_ensemble.serving.ops") for s in strings)


def backend_stubs(state_dir) -> list:
    """The ``/proc`` folders of the Python-backend stubs of the tritonserver whose state is in ``state_dir``."""
    stub = (Path(state_dir) / "backends" / "python" / "triton_python_backend_stub").as_posix().encode()
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if (process / "cmdline").read_bytes().split(b"\0")[0] == stub:
                found.append(process)
        except OSError:
            continue
    return found


def test_the_numpy_tower_keeps_tensorflow_out_of_the_backend(served):
    """The running stub of the default (NumPy tower) repository has not loaded TensorFlow: its log
    line says so, and no TensorFlow library is mapped into the process."""
    from build_ensemble.config import BuildConfig

    log = served.log_path.read_text()
    assert "retrieval version 1 loaded in" in log and "tensorflow not imported" in log, log[-3000:]
    stubs = backend_stubs(served.state_dir)
    assert len(stubs) == BuildConfig.instances == 1
    for stub in stubs:
        assert "tensorflow" not in (stub / "maps").read_text()


def test_the_savedmodel_tower_serves_in_the_backend_with_tensorflow(movielens_build, offline, tmp_path):
    """A build without a verified NumPy tower serves its SavedModel in the backend process (which then
    imports TensorFlow), with the offline answers."""
    graph = GraphSpec(**json.loads((movielens_build.out / C.MANIFEST_FILE).read_text())["graph"])
    export_repository(movielens_build.out, tmp_path / "repo", movielens_build.feature_repo, spec=replace(graph, numpy_tower=False))
    assert not (tmp_path / "repo" / C.MODEL_NAME / "1" / "ensemble" / "query_tower" / "tower.json").exists()
    users = sorted(offline)[::90]
    spec = server_spec(tmp_path / "repo", tmp_path / "state", feature_repo=movielens_build.feature_repo)
    spec.verify = False  # export_repository alone writes no build manifest
    with TritonServer(spec), RetrievalClient(spec.grpc_url) as c:
        answers = c.recommend(users)
        assert "tensorflow imported" in spec.log_path.read_text()
        assert all("libtensorflow" in (stub / "maps").read_text() for stub in backend_stubs(spec.state_dir))
    for user, answer in zip(users, answers):
        assert answer.item_ids == offline[user][0].tolist(), user
        np.testing.assert_allclose(answer.scores, offline[user][1], atol=1e-4)
