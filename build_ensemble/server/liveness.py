"""A liveness check that sees what ``/v2/health/live`` does not: the model's backend process.

Triton 2.51 keeps a model READY when its Python-backend process has died, and fails every request
with "Stub process ... is not healthy" while ``/v2/health/live`` stays green. This check fails
(exit code 1, one line) when the model is not ready or fewer live backend processes of it run
under the server than its config has instances (Triton keeps sending a dead instance its share
of the requests), so an orchestrator restarts the container; it sends no inference request::

    python -m build_ensemble.server.liveness [--url 127.0.0.1:8000] [--model retrieval] [--server-pid PID]

Without ``--server-pid`` the server is the process named ``tritonserver`` in this PID
namespace (the container's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from build_ensemble import constants as C
from build_ensemble.server.launch import is_ready
from build_ensemble.server.supervise import backend_stubs, instance_count


def server_pids() -> list:
    """Pids of the processes named ``tritonserver``."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "tritonserver":
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return sorted(found)


def check(url: str, model: str, server_pid: int | None = None) -> str | None:
    """None when the model is ready and has a live backend process for each instance, else why not."""
    import urllib.error
    import urllib.request

    pids = [server_pid] if server_pid else server_pids()
    if not pids:
        return "no tritonserver process"
    if not is_ready(url):
        return f"tritonserver on {url} is not ready"
    try:
        with urllib.request.urlopen(f"http://{url}/v2/models/{model}/ready", timeout=5) as response:
            if response.status != 200:
                return f"model {model} is not ready"
    except (urllib.error.URLError, OSError):
        return f"model {model} is not ready"
    try:
        instances = instance_count(url, model)
    except (urllib.error.URLError, OSError, ValueError):
        return f"model {model}'s config cannot be read from {url}"
    alive = max(len(backend_stubs(pid, model)) for pid in pids)
    if alive < instances:
        return f"model {model} is ready but only {alive} of its {instances} backend processes run (Triton does not restart them)"
    return None


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build_ensemble.server.liveness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8000", help="the server's HTTP host:port (default: 127.0.0.1:8000)")
    parser.add_argument("--model", default=C.MODEL_NAME, help=f"model to check (default: {C.MODEL_NAME})")
    parser.add_argument("--server-pid", type=int, default=None, help="tritonserver's pid (default: found by name)")
    args = parser.parse_args(argv)
    problem = check(args.url, args.model, args.server_pid)
    if problem:
        print(f"not live: {problem}", file=sys.stderr)
        return 1
    print(f"live: {args.model} ready with a running backend process for each instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
