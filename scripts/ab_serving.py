"""A/B of two checkouts' serving code on one model repository, alternated in one run.

Each side is a virtual environment with build-ensemble installed (editable) from one checkout:
its ``build-ensemble serve`` starts the tritonserver whose backend imports that checkout's code.
The sides take turns, A then B, ``--rounds`` times, each turn a fresh server measured at every
``--concurrency`` by the load-test harness (gRPC, loopback, one user per request), so that the
machine's noise falls on both alike. Ratios of medians (B / A) are what to read.

    .venv/bin/python scripts/ab_serving.py --build BUILD --repository REPO \\
        --venv-a ../old-checkout/.venv --venv-b .venv --out benchmarks/ab_serving.json

Prints a table and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from build_ensemble.loadtest import harness as loadtest
from build_ensemble.server.state import read_state

PORTS = {"--http-port": 18300, "--grpc-port": 18301, "--metrics-port": 18302}


def serve(venv: Path, repository: Path, state_dir: Path) -> int:
    """Start ``venv``'s server in the background; returns its pid."""
    cli = str(venv / "bin" / "build-ensemble")
    ports = [str(v) for item in PORTS.items() for v in item]
    done = subprocess.run([cli, "serve", "--background", "--no-verify", "--repository", str(repository),
                           "--state-dir", str(state_dir), *ports], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{cli} serve failed:\n{done.stdout}\n{done.stderr}")
    return read_state(state_dir)["pid"]


def stop(venv: Path, state_dir: Path) -> None:
    subprocess.run([str(venv / "bin" / "build-ensemble"), "stop", "--state-dir", str(state_dir)],
                   capture_output=True, text=True, timeout=120, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", required=True, help="build folder (its users are the request ids)")
    parser.add_argument("--repository", required=True, help="model repository both sides serve")
    parser.add_argument("--venv-a", required=True)
    parser.add_argument("--venv-b", required=True)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured level")
    parser.add_argument("--out", default="benchmarks/ab_serving.json")
    args = parser.parse_args()

    ids = loadtest.UserIds(args.build)
    url = f"127.0.0.1:{PORTS['--grpc-port']}"
    runs: dict = {}
    for round_ in range(args.rounds):
        for side in ("a", "b"):
            venv, state_dir = Path(getattr(args, f"venv_{side}")).resolve(), Path(args.out).parent / f".ab-{side}"
            pid = serve(venv, Path(args.repository), state_dir)
            try:
                loadtest.run_level(url, "grpc", ids, concurrency=1, duration=2)  # warm-up
                for concurrency in args.concurrency:
                    result = loadtest.run_level(url, "grpc", ids, concurrency=concurrency, duration=args.duration,
                                                server_pid=pid)
                    runs.setdefault((side, concurrency), []).append(result)
                    print(f"round {round_ + 1} {side} c={concurrency}: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                          f"p99 {result.p99_ms:.2f} ms", file=sys.stderr, flush=True)
            finally:
                stop(venv, state_dir)
    rows = []
    for (side, concurrency), results in sorted(runs.items()):
        rows.append({"side": side, "venv": str(getattr(args, f"venv_{side}")), "concurrency": concurrency,
                     "rps": statistics.median(r.rps for r in results), "rps_all": [round(r.rps, 1) for r in results],
                     "p50_ms": statistics.median(r.p50_ms for r in results),
                     "p99_ms": statistics.median(r.p99_ms for r in results),
                     "errors": sum(sum(r.errors.values()) for r in results)})
    print("| c | A req/s | B req/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms |\n|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        a, b = (next(r for r in rows if r["side"] == s and r["concurrency"] == concurrency) for s in ("a", "b"))
        print(f"| {concurrency} | {a['rps']:,.0f} | {b['rps']:,.0f} | {b['rps'] / a['rps']:.2f} | {a['p50_ms']:.2f} "
              f"| {b['p50_ms']:.2f} | {a['p99_ms']:.2f} | {b['p99_ms']:.2f} |")
    report = {"rows": rows, "repository": str(Path(args.repository).resolve()), "rounds": args.rounds,
              "duration_s": args.duration, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
