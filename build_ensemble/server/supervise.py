"""Keep a launched tritonserver serving: restart it when it crashes, reload the model when its
backend process dies, and load new model versions into it."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import urllib.request
from pathlib import Path
from typing import Callable

from build_ensemble import constants as C
from build_ensemble.errors import ServerError
from build_ensemble.integrity import verify_repository
from build_ensemble.server.launch import READY_TIMEOUT, STOP_TIMEOUT, ServerSpec, TritonServer, check_repository, log_errors

logger = logging.getLogger(__name__)

RELOAD_TIMEOUT = 300.0


class SupervisedServer(TritonServer):
    """A :class:`TritonServer` with a :class:`Watchdog` while it runs (when ``spec.watchdog`` and
    explicit model control), restarted by :meth:`supervise` when it crashes."""

    def __init__(self, spec: ServerSpec):
        super().__init__(spec)
        self.watchdog: Watchdog | None = None

    def start(self, timeout: float = READY_TIMEOUT, checked: bool = False) -> "SupervisedServer":
        super().start(timeout, checked)
        if self.spec.watchdog and self.spec.model_control == "explicit":
            self.watchdog = Watchdog(self.spec, lambda: self.pid)
            self.watchdog.start()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        super().stop(timeout)

    def supervise(self, on_start: Callable[["SupervisedServer"], None] | None = None, max_restarts: int = 10) -> int:
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


class Watchdog(threading.Thread):
    """Reloads the retrieval model when its Python-backend process has died, without sending
    inference traffic (an idle server's request counters stay still).

    Triton 2.51 does not restart a dead backend process: the model stays READY and every
    request fails with "Stub process ... is not healthy" until the model is loaded again.
    Every ``interval`` seconds this thread looks for the model's backend processes among the
    server's children (``/proc``); when the model is ready but fewer are alive than its config
    has instances (Triton keeps sending a dead instance its share of the requests), it unloads
    and loads the model (explicit model control), which starts new backend processes: about
    8 s on 2 cores, during which requests fail as they already did.

    Args:
        spec: the server's spec.
        server_pid: returns the pid of the running tritonserver.
        interval: seconds between looks.
    """

    def __init__(self, spec: ServerSpec, server_pid: Callable[[], int | None], interval: float = 2.0):
        super().__init__(daemon=True, name="triton-watchdog")
        self.spec = spec
        self.server_pid = server_pid
        self.interval = interval
        self.reloads = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(self.spec.http_url, connection_timeout=30, network_timeout=60)
        while not self._stopping.wait(self.interval):
            try:
                pid = self.server_pid()
                if pid is None or not client.is_model_ready(C.MODEL_NAME):
                    continue
                alive, instances = len(backend_stubs(pid, C.MODEL_NAME)), instance_count(self.spec.http_url, C.MODEL_NAME)
                if alive >= instances:
                    continue
                logger.error("%s: %d of %d backend processes died; loading the model again", C.MODEL_NAME,
                             instances - alive, instances)
                # With unchanged files Triton would keep the dead instance on a plain load
                # (even with a config override): unload, then load a new backend process.
                # Triton 2.51 never finishes unloading a model whose backend process died with
                # requests in flight (measured: no "unloading" in 30 s under load), so the new load
                # follows at once; with several instances the old live ones linger beside the new.
                client.unload_model(C.MODEL_NAME, headers=self.spec.control_headers)
                client.load_model(C.MODEL_NAME, headers=self.spec.control_headers)
                self.reloads += 1
                logger.error("%s: reloaded (%d so far)", C.MODEL_NAME, self.reloads)
            except InferenceServerException as failed:
                logger.error("%s: reload failed: %s", C.MODEL_NAME, failed.message())
            except Exception:  # noqa: BLE001  the server may be stopping; the next look decides
                continue
        client.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=self.interval + 70)


def instance_count(http_url: str, model: str) -> int:
    """The number of instances (backend processes) that ``model``'s loaded config asks for."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/config", timeout=5) as response:
        config = json.load(response)
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1


def backend_stubs(server_pid: int, model: str) -> list:
    """Pids of the live Python-backend processes of ``model``'s instances (``<model>_<n>_<m>``)
    among a server's children; a dead one (gone, or a zombie) is not listed."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != server_pid or fields[0] == "Z":
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and any(
            a.decode(errors="replace").startswith(f"{model}_") for a in argv[1:]
        ):
            found.append(int(stat.parent.name))
    return sorted(found)


def reload_models(spec: ServerSpec, timeout: float = RELOAD_TIMEOUT) -> dict:
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
    headers = spec.control_headers
    try:
        for model in models:
            client.load_model(model, headers=headers)
        index = client.get_model_repository_index(headers=headers)
    except InferenceServerException as exc:
        raise ServerError(f"reload failed: {exc.message()} (log: {spec.log_path}):\n{log_errors(spec.log_path)}") from None
    finally:
        client.close()
    ready: dict = {}
    for entry in index:
        if entry.get("state") == "READY":
            ready.setdefault(entry["name"], []).append(entry.get("version"))
    return ready
