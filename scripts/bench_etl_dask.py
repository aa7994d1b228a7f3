"""ETL on Dask: the build's NVTabular workflow on a LocalCluster with memory limits that force spilling.

Generates synthetic Ali-CCP (20M rows by default, 1M-row parquet parts), then joins the
interactions with the features, fits the workflow on the training split and transforms train
and valid on the cluster, exactly as `build-ensemble build --workers N --worker-memory M`
does, while sampling every worker's resident memory
and spilled bytes. The limit per worker is far below the data's size, so a data set larger
than a worker's memory goes through.

    .venv/bin/python scripts/bench_etl_dask.py                     # 20M rows, 2 workers x 512 MB, 16 MB partitions
    .venv/bin/python scripts/bench_etl_dask.py --worker-memory 1GB --part-size 32MB

Prints the figures and writes benchmarks/etl_dask.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pandas as pd  # noqa: E402

from build_ensemble.config import make_config  # noqa: E402
from build_ensemble.datasets import synthetic  # noqa: E402
from build_ensemble.progress import Reporter  # noqa: E402
from build_ensemble.workflow import DaskSettings, dask_cluster, fit_workflow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _worker_state(dask_worker) -> dict:
    import psutil

    data = dask_worker.data
    spilled = getattr(data, "spilled_total", None)
    slow = getattr(data, "slow", None)
    return {"rss": psutil.Process().memory_info().rss,
            "spilled_bytes": getattr(spilled, "disk", None) if spilled is not None else None,
            "spilled_keys": len(slow) if slow is not None else None}


class Sampler(threading.Thread):
    """Polls each worker's RSS and spill counters twice a second; keeps the peaks."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client = client
        self.peaks: dict = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                states = self.client.run(_worker_state)
            except Exception:  # noqa: BLE001  a worker may be restarting
                continue
            for address, state in states.items():
                peak = self.peaks.setdefault(address, {"peak_rss_mb": 0.0, "peak_spilled_mb": 0.0, "peak_spilled_keys": 0})
                peak["peak_rss_mb"] = max(peak["peak_rss_mb"], round(state["rss"] / 2**20, 1))
                if state["spilled_bytes"] is not None:
                    peak["peak_spilled_mb"] = max(peak["peak_spilled_mb"], round(state["spilled_bytes"] / 2**20, 1))
                if state["spilled_keys"] is not None:
                    peak["peak_spilled_keys"] = max(peak["peak_spilled_keys"], state["spilled_keys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory", default="512MB")
    parser.add_argument("--part-size", default="16MB")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "etl_dask.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-etl-dask-") as tmp:
        root = Path(tmp)
        config = make_config(overrides={"rows": args.rows, "workers": args.workers, "worker_memory": args.worker_memory})
        start = time.perf_counter()
        data = synthetic.prepare(config, root, Reporter())
        generate_seconds = time.perf_counter() - start
        raw_bytes = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        settings = DaskSettings(args.workers, None, args.worker_memory, str(root / "dask"), args.part_size)
        # The sampler needs the client: open the cluster here; inside the block merlin runs
        # every Dask graph, fit_workflow's included, on it.
        with dask_cluster(settings) as client:
            sampler = Sampler(client)
            sampler.start()
            start = time.perf_counter()
            transformed = fit_workflow(data, root, root / ".work", config.seed, DaskSettings(part_size=args.part_size))
            etl_seconds = time.perf_counter() - start
            sampler.done.set()
            sampler.join()
        rows = data.counts["train_rows"] + data.counts["valid_rows"]
        out_bytes = sum(p.stat().st_size for p in transformed.train_dir.rglob("*.parquet"))
        joined_bytes = sum(int(pd.read_parquet(p).memory_usage(deep=True).sum())
                           for p in (root / ".work" / "joined").rglob("*.parquet"))
    report = {
        "rows_generated": args.rows,
        "rows_through_etl": rows,
        "raw_parquet_mb": round(raw_bytes / 2**20),
        "transformed_train_mb": round(out_bytes / 2**20),
        "generate_seconds": round(generate_seconds, 1),
        "etl_seconds": round(etl_seconds, 1),
        "etl_rows_per_second": round(rows / etl_seconds),
        "joined_data_in_memory_mb": round(joined_bytes / 2**20),
        "workers": args.workers,
        "worker_memory_limit": args.worker_memory,
        "worker_restarts": len(sampler.peaks) - args.workers,
        "part_size": args.part_size,
        "per_worker": list(sampler.peaks.values()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "ETL = join with features + NVTabular fit and transform, all on the cluster; workers preload build_ensemble.dask_worker (no TensorFlow)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
