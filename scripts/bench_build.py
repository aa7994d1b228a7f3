"""Build benchmark: ETL rows/s, training examples/s and peak memory of `build-ensemble build`.

Each size runs in its own process (so its peak RSS is its own) on synthetic Ali-CCP:

    .venv/bin/python scripts/bench_build.py                 # 1M rows (the reference size)
    .venv/bin/python scripts/bench_build.py --rows 100000 1000000 --epochs 1

Prints a table and writes benchmarks/build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_build(rows: int, epochs: int, workdir: Path) -> dict:
    """One build in a child process; returns its manifest figures and peak RSS."""
    cli = Path(sys.executable).parent / "build-ensemble"
    out = workdir / f"rows{rows}"
    cmd = [str(cli), "build", "--rows", str(rows), "--epochs", str(epochs), "--out", str(out / "artifacts"),
           "--feature-repo", str(out / "feature_repo"), "--repository", str(out / "model_repository")]
    start = time.perf_counter()
    with open(workdir / f"rows{rows}.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build of {rows} rows failed: see {workdir / f'rows{rows}.log'}")
    manifest = json.loads((out / "artifacts" / "manifest.json").read_text())
    timings, data = manifest["timings_seconds"], manifest["data"]
    etl_rows = data["train_rows"] + data["valid_rows"]
    return {
        "rows": rows,
        "epochs": epochs,
        "train_clicks": data["train_clicks"],
        "data_seconds": timings["data"],
        "etl_seconds": timings["workflow"],
        "etl_rows_per_second": round(etl_rows / timings["workflow"]),
        "train_seconds": timings["train"],
        "train_examples_per_second": manifest["training"]["examples_per_second"],
        "build_seconds": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[1_000_000], help="synthetic rows per build")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per build")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "build.json"), help="results file")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        for rows in args.rows:
            print(f"building {rows:,} rows ...", file=sys.stderr, flush=True)
            results.append(run_build(rows, args.epochs, Path(tmp)))

    header = f"{'rows':>10} {'ETL s':>7} {'ETL rows/s':>11} {'train s':>8} {'train ex/s':>11} {'build s':>8} {'peak RSS MB':>12}"
    print(header)
    for r in results:
        print(f"{r['rows']:>10,} {r['etl_seconds']:>7.1f} {r['etl_rows_per_second']:>11,} {r['train_seconds']:>8.1f} "
              f"{r['train_examples_per_second']:>11,.0f} {r['build_seconds']:>8.1f} {r['peak_rss_mb']:>12,}")
    report = {
        "rows": results,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": "ETL = NVTabular fit on train + transform of train and valid; training examples are clicked "
        "training rows per second over all epochs; peak RSS of the build process.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
