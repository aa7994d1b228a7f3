"""The state folder of a running ``build-ensemble serve``: its record (pids, ports, paths) and how to stop it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from build_ensemble.server.launch import STOP_TIMEOUT, ServerSpec, TritonServer, stop_pid

STATE_FILE = "server.json"


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
