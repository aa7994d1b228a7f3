"""Build benchmark: ETL rows/s, training examples/s and peak memory of `build-ensemble build`.

Each build runs in its own process (so its peak RSS is its own): synthetic Ali-CCP (14
categorical features), and a dataset spec of your own kind (examples/own_data.py: string ids,
categorical, continuous and list features on both sides, a rating label with a threshold):

    .venv/bin/python scripts/bench_build.py                 # 1M rows of each (the reference size)
    .venv/bin/python scripts/bench_build.py --rows 100000 1000000 --spec-rows 1000000 --epochs 1

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


def run_build(rows: int, epochs: int, workdir: Path, source: str = "synthetic") -> dict:
    """One build in a child process; returns its manifest figures and peak RSS."""
    cli = Path(sys.executable).parent / "build-ensemble"
    out = workdir / f"{source}{rows}"
    data = ["--rows", str(rows)]
    if source == "spec":
        sys.path.insert(0, str(ROOT))
        from examples.own_data import write_own_data

        data = ["--dataset-spec", str(write_own_data(out / "data", users=rows // 20, items=rows // 50, events=rows))]
    cmd = [str(cli), "build", *data, "--epochs", str(epochs), "--out", str(out / "artifacts"),
           "--feature-repo", str(out / "feature_repo"), "--repository", str(out / "model_repository")]
    start = time.perf_counter()
    with open(workdir / f"{source}{rows}.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build of {rows} {source} rows failed: see {workdir / f'{source}{rows}.log'}")
    manifest = json.loads((out / "artifacts" / "manifest.json").read_text())
    timings, data = manifest["timings_seconds"], manifest["data"]
    etl_rows = data["train_rows"] + data["valid_rows"]
    return {
        "source": source,
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
    parser.add_argument("--spec-rows", nargs="*", type=int, default=[1_000_000],
                        help="interaction rows per build of the dataset-spec data (none: skip)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per build")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "build.json"), help="results file")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        for source, sizes in (("synthetic", args.rows), ("spec", args.spec_rows)):
            for rows in sizes:
                print(f"building {rows:,} {source} rows ...", file=sys.stderr, flush=True)
                results.append(run_build(rows, args.epochs, Path(tmp), source))

    header = (f"{'source':>9} {'rows':>10} {'data s':>7} {'ETL s':>7} {'ETL rows/s':>11} {'train s':>8} "
              f"{'train ex/s':>11} {'build s':>8} {'peak RSS MB':>12}")
    print(header)
    for r in results:
        print(f"{r['source']:>9} {r['rows']:>10,} {r['data_seconds']:>7.1f} {r['etl_seconds']:>7.1f} "
              f"{r['etl_rows_per_second']:>11,} {r['train_seconds']:>8.1f} "
              f"{r['train_examples_per_second']:>11,.0f} {r['build_seconds']:>8.1f} {r['peak_rss_mb']:>12,}")
    report = {
        "rows": results,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": "ETL = NVTabular fit on train + transform of train and valid; training examples are clicked "
        "training rows per second over all epochs; peak RSS of the build process. spec: examples/own_data.py "
        "at rows interactions, rows/20 users, rows/50 items, read through the dataset spec.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
