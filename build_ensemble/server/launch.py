"""Launch and stop a real ``tritonserver``: the CPU build shipped in the ``nvidia-pytriton`` wheel.

That wheel brings tritonserver 2.51 with the Python backend (no TensorFlow backend). Its
Python-backend stub runs the interpreter of the first ``python3`` on ``PATH``, so the
project's virtual environment is put first; ``PYTHONPATH`` is ignored by the stub.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from build_ensemble import constants as C
from build_ensemble.errors import ArtifactNotFoundError, ServerError
from build_ensemble.integrity import verify_repository

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
LOG_FILE = "tritonserver.log"
KEY_FILE = "control.key"  # the control-plane key of a state folder (mode 0600)
KEY_HEADER = "triton-control-key"
# Triton APIs that change the server (load/unload models, shared memory, logging, tracing): they
# need the key header. Inference, health, metadata, model config and statistics stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


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
        restricted: Triton's model-repository, shared-memory, logging and trace APIs need the
            header ``triton-control-key`` with the state folder's key (:func:`control_key`).
        watchdog: reload the retrieval model when its Python-backend process dies (``supervise.Watchdog``;
            only a ``SupervisedServer`` runs one).
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
    watchdog: bool = True
    restricted: bool = True

    @property
    def control_headers(self) -> dict:
        """The header that the restricted APIs need (empty when they are open)."""
        return {KEY_HEADER: control_key(self.state_dir)} if self.restricted else {}

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


def control_key(state_dir: str | Path) -> str:
    """The control-plane key of a state folder: read from ``control.key``, made (mode 0600) if missing."""
    import secrets

    path = Path(state_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def command(spec: ServerSpec, backends: Path) -> list:
    """The tritonserver command line."""
    restricted = []
    if spec.restricted:
        rule = f"{','.join(RESTRICTED_APIS)}:{KEY_HEADER}={control_key(spec.state_dir)}"
        restricted = [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
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
        *restricted,
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


# The variables `environment` sets or changes (a plain tritonserver needs them too).
SERVER_ENV = ("PATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL", "FEAST_USAGE", C.FEATURE_REPO_ENV)


def shell_script(spec: ServerSpec) -> str:
    """A POSIX shell script that runs tritonserver exactly as :class:`TritonServer` does: the
    environment it sets, then ``exec`` of the command line (for systemd, a container or
    Kubernetes). Makes the backend folder in ``spec.state_dir`` if it is missing."""
    import shlex

    env = environment(spec)
    lines = ["#!/bin/sh", "# tritonserver as `build-ensemble serve` runs it (build-ensemble serve --print-command)"]
    lines += [f"export {name}={shlex.quote(env[name])}" for name in SERVER_ENV if name in env]
    argv = command(spec, backend_dir(Path(spec.state_dir)))
    lines.append("exec " + " \\\n  ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def is_ready(http_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def check_ports(spec: ServerSpec) -> None:
    """Refuse to start when a port is taken or named twice (Triton would fail with an unrelated
    message, or run without that service).

    Raises:
        ServerError: naming the port, what uses it and the option to change.
    """
    ports = {"HTTP": spec.http_port, "gRPC": spec.grpc_port, "metrics": spec.metrics_port}
    flags = {"HTTP": "--http-port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}
    for name, port in ports.items():
        others = [other for other, value in ports.items() if value == port and other != name]
        if others:
            raise ServerError(f"the {name} and {others[0]} ports are both {port}: give each service its own port")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As Triton binds: a port in TIME_WAIT is free, one something listens on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((spec.host, port))
            except OSError as exc:
                raise ServerError(f"the {name} port {spec.host}:{port} is in use ({exc.strerror}): stop what listens "
                                  f"there or choose another {flags[name]}") from None


def service_failures(log: Path) -> list:
    """Services Triton reports it could not start (``failed to start ... service``), from its log."""
    if not log.exists():
        return []
    return [line.split('] "', 1)[-1].rstrip('"') for line in log.read_text(errors="replace").splitlines()
            if "failed to start" in line]


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

    def check(self) -> None:
        """What must hold before the server starts: a repository (verified against its checksums
        with ``spec.verify``), the feature repository if one is named, three free ports.

        Raises:
            ArtifactNotFoundError: if the repositories are missing.
            IntegrityError: if ``spec.verify`` and a model version differs from its manifest.
            ServerError: if a port is taken or repeated.
        """
        repository = Path(self.spec.repository)
        check_repository(repository)
        if self.spec.verify:
            verify_repository(repository)
        if self.spec.feature_repo and not (Path(self.spec.feature_repo) / "feature_store.yaml").exists():
            raise ArtifactNotFoundError(f"feature repository {self.spec.feature_repo} has no feature_store.yaml")
        check_ports(self.spec)

    def start(self, timeout: float = READY_TIMEOUT, checked: bool = False) -> "TritonServer":
        """Start the server (after :meth:`check`, unless ``checked``) and wait until ``/v2/health/ready``.

        Raises:
            ArtifactNotFoundError, IntegrityError: see :meth:`check`.
            ServerError: if a port is taken, the server exits or starts without one of its
                services, or it is not ready in time (with the server's own error lines).
        """
        if not checked:
            self.check()
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
                failed = service_failures(self.spec.log_path)
                if failed:  # Triton goes on without a service it could not start (e.g. metrics)
                    self.stop()
                    raise ServerError(f"tritonserver started without a service ({failed[0]}); log: {self.spec.log_path}")
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(
            f"tritonserver was not ready within {timeout:.0f} s (log: {self.spec.log_path}):\n"
            f"{log_errors(self.spec.log_path)}"
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop with SIGINT (Triton unloads models), SIGKILL after ``timeout``."""
        if self.process is not None:
            stop_pid(self.process.pid, timeout)
            self.process.wait()
            self.process = None

    def __enter__(self) -> "TritonServer":
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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


