"""Soak test: a served build under steady load for minutes, checking errors and memory growth.

Builds MovieLens-100K (or uses --build), serves it with `build-ensemble serve`'s defaults,
and drives it over gRPC at concurrency 8 with real user ids (5% unknown) in one-minute
windows. Per minute: requests, req/s, p50/p99, errors, and the server's resident memory
(tritonserver and its backend processes) at the end of the minute. Passes when there is no
error and RSS grows less than 10% from the end of minute 2 to the end. Loopback only.

    .venv/bin/python scripts/soak.py                     # 10 minutes
    .venv/bin/python scripts/soak.py --minutes 3 --out /tmp/soak.json

Prints the table and writes benchmarks/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from build_ensemble.loadtest import harness as loadtest  # noqa: E402
from build_ensemble.config import make_config  # noqa: E402
from build_ensemble.pipeline import build  # noqa: E402
from build_ensemble.server.launch import ServerSpec  # noqa: E402
from build_ensemble.server.supervise import SupervisedServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROWTH_LIMIT = 0.10


def soak(build_dir: Path, repository: Path, state: Path, minutes: int, concurrency: int, unknown_share: float) -> dict:
    spec = ServerSpec(repository=str(repository), state_dir=str(state), http_port=18100, grpc_port=18101,
                      metrics_port=18102, watchdog=True)
    ids = loadtest.UserIds(build_dir, unknown_share)
    rows = []
    with SupervisedServer(spec) as server:
        for minute in range(1, minutes + 1):
            level = loadtest.run_level(spec.grpc_url, "grpc", ids, concurrency=concurrency, duration=60,
                                       server_pid=server.pid)
            rss = loadtest.process_tree_rss_mb(server.pid)
            rows.append({"minute": minute, **{k: v for k, v in asdict(level).items() if k not in ("models", "versions")},
                         "rss_end_mb": rss})
            print(f"minute {minute:>2}: {level.ok:>7} ok  {level.rps:>7.1f} req/s  p50 {level.p50_ms:6.2f} ms  "
                  f"p99 {level.p99_ms:6.2f} ms  errors {sum(level.errors.values())}  RSS {rss:.0f} MB",
                  file=sys.stderr, flush=True)
        restarts = server.watchdog.reloads if server.watchdog else 0
    base = rows[min(1, len(rows) - 1)]["rss_end_mb"]
    growth = (rows[-1]["rss_end_mb"] - base) / base
    errors = sum(sum(r["errors"].values()) for r in rows)
    return {
        "minutes": rows,
        "requests": sum(r["requests"] for r in rows),
        "errors": errors,
        "rss_growth_from_minute_2": round(growth, 4),
        "backend_reloads": restarts,
        "passed": errors == 0 and growth < GROWTH_LIMIT,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--unknown-share", type=float, default=0.05)
    parser.add_argument("--build", default=None, help="an existing build folder (its repository is served); default: build MovieLens-100K")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "soak.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        if args.build:
            build_dir = Path(args.build)
            repository = Path(json.loads((build_dir / "manifest.json").read_text())["repository"])
        else:
            config = make_config(overrides={"dataset": "movielens-100k", "out": str(folder / "artifacts"),
                                            "feature_repo": str(folder / "feature_repo"),
                                            "repository": str(folder / "model_repository")})
            result = build(config)
            build_dir, repository = result.out, result.repository
        report = soak(build_dir, repository, folder / ".serve", args.minutes, args.concurrency, args.unknown_share)
    report.update({
        "concurrency": args.concurrency, "unknown_share": args.unknown_share, "protocol": "grpc",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'minute':>6} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} {'RSS MB':>7}")
    for r in report["minutes"]:
        print(f"{r['minute']:>6} {r['requests']:>9} {r['rps']:>8.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{sum(r['errors'].values()):>7} {r['rss_end_mb']:>7.0f}")
    print(f"\nerrors {report['errors']}, RSS growth from minute 2 {report['rss_growth_from_minute_2']:+.1%}, "
          f"backend reloads {report['backend_reloads']}: {'PASS' if report['passed'] else 'FAIL'}")
    print(f"wrote {out}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
