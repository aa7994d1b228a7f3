"""Start and stop a real ``tritonserver``: the CPU build shipped in the ``nvidia-pytriton`` wheel.

That wheel brings tritonserver 2.51 with the Python backend (no TensorFlow backend). Its
Python-backend stub runs the interpreter of the first ``python3`` on ``PATH``, so the
project's virtual environment is put first; ``PYTHONPATH`` is ignored by the stub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError, ServerError
from build_ensemble.integrity import verify_repository

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
STATE_FILE = "server.json"
LOG_FILE = "tritonserver.log"


@dataclass
class ServerSpec:
    """How to run one server.

    Attributes:
        repository: Triton model repository.
        feature_repo: Feast repository the models read (exported as ``$BUILD_ENSEMBLE_FEATURE_REPO``);
            None lets the models find it beside the model repository.
        state_dir: where the log, pid file and backend folder go.
        host: address to bind (loopback unless told otherwise).
        http_port, grpc_port, metrics_port: ports.
        model_control: Triton's ``--model-control-mode``: ``explicit`` (every model loaded at
            start; ``build-ensemble reload`` loads new versions), ``poll`` (Triton loads new
            versions by itself, unverified) or ``none``.
        verify: check every version folder against its build manifest's checksums first.
        watchdog: reload the retrieval model when its Python-backend process dies (see :class:`Watchdog`).
    """

    repository: str
    feature_repo: str | None = None
    state_dir: str = ".serve"
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control: str = "explicit"
    verify: bool = True
    watchdog: bool = False

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return Path(self.state_dir) / LOG_FILE


def pytriton_root() -> Path:
    """The ``tritonserver`` folder of the installed ``nvidia-pytriton`` wheel.

    Raises:
        ServerError: if the wheel is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    root = Path(spec.submodule_search_locations[0]) / "tritonserver" if spec else None
    if root is None or not (root / "bin" / "tritonserver").exists():
        raise ServerError("tritonserver not found: install it with `make setup` (nvidia-pytriton, --no-deps)")
    return root


def backend_dir(state_dir: Path) -> Path:
    """A backend folder holding the Python backend and the stub for this interpreter."""
    root = pytriton_root()
    python = state_dir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        link = python / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return python.parent


def check_repository(repository: Path) -> list:
    """Names of the models in a repository.

    Raises:
        ArtifactNotFoundError: if it holds no model (``<model>/config.pbtxt``).
    """
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    if not models:
        raise ArtifactNotFoundError(
            f"model repository {repository} holds no model (no */config.pbtxt): run `build-ensemble build`"
        )
    return models


def command(spec: ServerSpec, backends: Path) -> list:
    """The tritonserver command line."""
    return [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={Path(spec.repository).resolve()}",
        f"--backend-directory={backends.resolve()}",
        f"--model-control-mode={spec.model_control}",
        f"--http-address={spec.host}",
        f"--http-port={spec.http_port}",
        f"--grpc-address={spec.host}",
        f"--grpc-port={spec.grpc_port}",
        f"--metrics-address={spec.host}",
        f"--metrics-port={spec.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        "--exit-on-error=true",
        "--strict-readiness=true",
        # In-flight requests may finish when the server stops (SIGINT) or a version is replaced.
        "--exit-timeout-secs=10",
    ] + (["--load-model=*"] if spec.model_control == "explicit" else [])


def environment(spec: ServerSpec) -> dict:
    """Environment of the server: this venv first on PATH, the wheel's libraries, the feature repo.

    The stub links ``libpython3.11.so``; the library of the interpreter that owns the venv
    goes first on the library path, or the stub may pick the system's copy, whose version
    differs from the venv's extension modules (``undefined symbol`` on import).
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libs = [str(pytriton_root().parent.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        libs.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # One thread per library: with parallel regions, faiss (OpenMP) and OpenBLAS worker threads
    # spin between calls and take the cores from the server and the clients (measured on
    # 2 cores, 1M items: p99 at concurrency 1 went from 9.8 ms to 3.7 ms).
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, "1")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("FEAST_USAGE", "False")
    if spec.feature_repo:
        env[C.FEATURE_REPO_ENV] = str(Path(spec.feature_repo).resolve())
    return env


def is_ready(http_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def log_errors(log: Path, lines: int = 5, width: int = 300) -> str:
    """The server's last error lines, each cut to its first line and ``width`` characters; the
    log's last lines when it has none (e.g. an option error printed with the usage text)."""
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()
    errors = []
    for line in text:
        if line.startswith("E") or line.startswith("error"):
            message = line.split('] "', 1)[-1].split("\\n", 1)[0].rstrip('"')
            errors.append(message[:width])
    errors = errors or [line[:width] for line in text if line.strip()][-2:]
    return "\n".join(f"  {e}" for e in errors[-lines:])


class TritonServer:
    """A running tritonserver process.

    Use as a context manager, or ``start()`` / ``stop()``.
    """

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.process: subprocess.Popen | None = None
        self.watchdog: Watchdog | None = None

    def start(self, timeout: float = READY_TIMEOUT) -> "TritonServer":
        """Start the server and wait until ``/v2/health/ready``.

        Raises:
            ArtifactNotFoundError: if the repositories are missing.
            IntegrityError: if ``spec.verify`` and a model version differs from its manifest.
            ServerError: if the port is taken, the server exits, or it is not ready in time
                (with the server's own error lines).
        """
        repository = Path(self.spec.repository)
        check_repository(repository)
        if self.spec.verify:
            verify_repository(repository)
        if self.spec.feature_repo and not (Path(self.spec.feature_repo) / "feature_store.yaml").exists():
            raise ArtifactNotFoundError(f"feature repository {self.spec.feature_repo} has no feature_store.yaml")
        if is_ready(self.spec.http_url):
            raise ServerError(f"a server already answers on {self.spec.http_url}: stop it or pick other ports")
        state = Path(self.spec.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        log = self.spec.log_path.open("w")
        self.process = subprocess.Popen(
            command(self.spec, backend_dir(state)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(self.spec),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode} while loading "
                    f"(log: {self.spec.log_path}):\n{log_errors(self.spec.log_path)}"
                )
            if is_ready(self.spec.http_url):
                if self.spec.watchdog and self.spec.model_control == "explicit":
                    self.watchdog = Watchdog(self.spec)
                    self.watchdog.start()
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready within {timeout:.0f} s (log: {self.spec.log_path}):\n"
            f"{log_errors(self.spec.log_path)}"
        )

    def supervise(self, on_start: Callable[["TritonServer"], None] | None = None, max_restarts: int = 10) -> int:
        """Wait for the server to exit; start it again when it dies (non-zero exit: a crash,
        e.g. Triton aborting after its backend process was killed, or a kill), at most
        ``max_restarts`` times. A clean exit (code 0) ends the supervision.

        Args:
            on_start: called after each restart (to record the new pid).

        Returns:
            The server's last exit code.
        """
        restarts = 0
        while True:
            code = self.process.wait()
            if code == 0 or restarts >= max_restarts:
                return code
            restarts += 1
            crash_log = self.spec.log_path.with_name(f"tritonserver.crash-{restarts}.log")
            shutil.copyfile(self.spec.log_path, crash_log)
            logger.error("tritonserver exited with code %s (log: %s); restarting (%d of at most %d)",
                         code, crash_log, restarts, max_restarts)
            self.stop()
            self.start()
            if on_start:
                on_start(self)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop with SIGINT (Triton unloads models), SIGKILL after ``timeout``."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.process is not None:
            stop_pid(self.process.pid, timeout)
            self.process.wait()
            self.process = None

    def __enter__(self) -> "TritonServer":
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Watchdog(threading.Thread):
    """Reloads the retrieval model when its Python-backend process has died.

    Triton 2.51 does not restart a dead backend process: the model stays READY and every
    request fails with "Stub process ... is not healthy" until the model is loaded again.
    Every ``interval`` seconds this thread sends one request for user 0 (the popular-items
    path when unknown); on that error it unloads and loads the model (explicit model
    control), which starts a new backend process: about 8 s on 2 cores, during which
    requests fail as they already did.

    Args:
        spec: the server's spec.
        interval: seconds between probes.
    """

    def __init__(self, spec: ServerSpec, interval: float = 2.0):
        super().__init__(daemon=True, name="triton-watchdog")
        self.spec = spec
        self.interval = interval
        self.reloads = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        import numpy as np
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(self.spec.http_url, connection_timeout=30, network_timeout=60)
        probe = httpclient.InferInput(C.INPUT_USER_ID, [1, 1], "INT64")
        probe.set_data_from_numpy(np.zeros((1, 1), dtype=np.int64))
        while not self._stopping.wait(self.interval):
            try:
                client.infer(C.MODEL_NAME, [probe])
            except InferenceServerException as exc:
                if "is not healthy" not in str(exc.message()) or self._stopping.is_set():
                    continue
                logger.error("%s: backend process died; loading the model again", C.MODEL_NAME)
                try:
                    # With unchanged files Triton would keep the dead instance on a plain load
                    # (even with a config override): unload, then load a new backend process.
                    client.unload_model(C.MODEL_NAME)
                    client.load_model(C.MODEL_NAME)
                    self.reloads += 1
                    logger.error("%s: reloaded (%d so far)", C.MODEL_NAME, self.reloads)
                except InferenceServerException as failed:
                    logger.error("%s: reload failed: %s", C.MODEL_NAME, failed.message())
            except Exception:  # noqa: BLE001  the server may be stopping; the next probe decides
                continue
        client.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=self.interval + 70)


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop a server's process group: SIGINT (Triton unloads its models), then SIGKILL for
    whatever is left once the leader has exited or after ``timeout`` (e.g. backend processes
    orphaned by a crashed server). True if the group existed."""
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if _is_zombie(pid):
                break
        except ProcessLookupError:
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return False


def write_state(server: TritonServer) -> Path:
    """Record a running server in ``<state_dir>/server.json``: its pid, the pid of the
    ``build-ensemble serve`` process that supervises it, ports and paths."""
    path = Path(server.spec.state_dir) / STATE_FILE
    path.write_text(json.dumps({"pid": server.pid, "supervisor": os.getpid(), **asdict(server.spec)}, indent=2))
    return path


def spec_from_state(state: dict) -> ServerSpec:
    """The :class:`ServerSpec` a state record was written from."""
    return ServerSpec(**{k: v for k, v in state.items() if k not in ("pid", "supervisor")})


def read_state(state_dir: str | Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def reload_models(spec: ServerSpec, timeout: float = READY_TIMEOUT) -> dict:
    """Ask a running server (``explicit`` model control) to load the repository's models again.

    Triton loads the newest version while the current one keeps serving, switches when it is
    ready, and lets the old one finish its requests before unloading it; if the new version
    fails to load, the old one stays. Models are loaded in name order (``0_query_tower``
    before ``retrieval``, which calls it).

    Returns:
        ``{model: [ready versions]}``.

    Raises:
        IntegrityError: if ``spec.verify`` and a version differs from its manifest.
        ServerError: with Triton's message if a load fails.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repository = Path(spec.repository)
    models = check_repository(repository)
    if spec.verify:
        verify_repository(repository)
    client = httpclient.InferenceServerClient(spec.http_url, connection_timeout=timeout, network_timeout=timeout)
    try:
        for model in models:
            client.load_model(model)
        index = client.get_model_repository_index()
    except InferenceServerException as exc:
        raise ServerError(f"reload failed: {exc.message()} (log: {spec.log_path}):\n{log_errors(spec.log_path)}") from None
    finally:
        client.close()
    ready: dict = {}
    for entry in index:
        if entry.get("state") == "READY":
            ready.setdefault(entry["name"], []).append(entry.get("version"))
    return ready


def stop_background(state_dir: str | Path) -> dict | None:
    """Stop the server recorded in ``state_dir`` (its supervisor first, which stops the
    server itself); returns its record, or None if there was none."""
    state = read_state(state_dir)
    if state is None:
        return None
    supervisor = state.get("supervisor")
    if supervisor and supervisor != os.getpid():
        stop_pid(int(supervisor), STOP_TIMEOUT + 10)
    stop_pid(int(state["pid"]))
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return state
