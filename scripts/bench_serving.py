"""Serving benchmark: our ensemble against the stock merlin-systems graph, side by side.

For each catalog size, builds through the real pipeline (synthetic Ali-CCP with that many
items: item features -> item tower -> embeddings -> index), exports the stock graph from the
same artifacts (scripts/stock_ensemble.py), serves each on the same tritonserver build, and
drives it over gRPC with the load-test harness (loopback, real user ids), each level
repeated; medians are reported with the spread.

    .venv/bin/python scripts/bench_serving.py                         # 10k, 100k, 1M items
    .venv/bin/python scripts/bench_serving.py --catalogs 10000 --repeats 1 --duration 3

Prints a table and writes benchmarks/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from build_ensemble import constants as C  # noqa: E402
from build_ensemble import index as ix  # noqa: E402
from build_ensemble.artifacts import read_embeddings  # noqa: E402
from build_ensemble.loadtest import harness as loadtest  # noqa: E402
from build_ensemble.server.launch import ServerSpec, TritonServer  # noqa: E402
from stock_ensemble import export_stock  # noqa: E402

SYSTEMS = {"ours": C.MODEL_NAME, "stock": "executor_model"}


def build(catalog: int, rows: int, folder: Path) -> None:
    cli = Path(sys.executable).parent / "build-ensemble"
    cmd = [str(cli), "build", "--rows", str(rows), "--items", str(catalog), "--epochs", "1",
           "--out", str(folder / "artifacts"), "--feature-repo", str(folder / "feature_repo"),
           "--repository", str(folder / "model_repository")]
    with open(folder / "build.log", "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"build of {catalog} items failed: see {folder / 'build.log'}")


def stock_recall(folder: Path, k: int = 10) -> tuple[float, float]:
    """Recall@k of setup_faiss's IVF32/nprobe 8 index against exact search: on 1,000 real user
    vectors and on 1,000 item vectors (measured as for our index, see index.py)."""
    import faiss

    ids, items = read_embeddings(folder / "artifacts" / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID)
    _, users = read_embeddings(folder / "artifacts" / C.USER_EMBEDDINGS_FILE, C.USER_ID)
    rng = np.random.default_rng(0)
    raw = faiss.read_index(str(folder / "artifacts" / "stock_ivf32.faiss"))
    stock = ix.ItemIndex(raw, ix.IndexInfo("ivf", len(ids), items.shape[1]))
    recalls = []
    for vectors in (users, items):
        queries = vectors[rng.permutation(len(vectors))[:1000]]
        recalls.append(round(ix.recall_against(stock, ix.exact_truth(items, ids, queries, k), items, pd.Index(ids), k), 4))
    return recalls[0], recalls[1]


def measure(system: str, repository: Path, folder: Path, levels: list, repeats: int, duration: float) -> list:
    spec = ServerSpec(repository=str(repository), state_dir=str(folder / f".serve-{system}"),
                      http_port=18000, grpc_port=18001, metrics_port=18002,
                      verify=system == "ours")  # the stock export has no build manifest
    ids = loadtest.UserIds(folder / "artifacts")
    rows = []
    with TritonServer(spec) as server:
        loadtest.run_level(spec.grpc_url, "grpc", ids, concurrency=1, duration=2, model=SYSTEMS[system])  # warm-up
        for concurrency in levels:
            runs = [
                loadtest.run_level(spec.grpc_url, "grpc", ids, concurrency=concurrency, duration=duration,
                                   server_pid=server.pid, model=SYSTEMS[system])
                for _ in range(repeats)
            ]
            rps = [r.rps for r in runs]
            rows.append({
                "system": system, "protocol": "grpc", "concurrency": concurrency,
                "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "p99_ms_max": max(r.p99_ms for r in runs),
                "errors": sum(sum(r.errors.values()) for r in runs),
                "rss_mb": max(r.server_rss_mb or 0 for r in runs),
                "models": runs[len(runs) // 2].models,
            })
            print(f"    {system} c={concurrency}: {rows[-1]['rps']:.1f} req/s, p50 {rows[-1]['p50_ms']:.2f} ms, "
                  f"p99 {rows[-1]['p99_ms']:.2f} ms", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic interaction rows per build")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured level")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "serving.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for catalog in args.catalogs:
            folder = Path(tmp) / f"items{catalog}"
            folder.mkdir()
            print(f"==> {catalog:,} items: build", file=sys.stderr, flush=True)
            build(catalog, args.rows, folder)
            export_stock(folder / "artifacts", folder / "feature_repo", folder / "stock_repository")
            manifest = json.loads((folder / "artifacts" / C.MANIFEST_FILE).read_text())
            index = manifest["index"]
            recalls = {"ours": (index["recall_at_k"], index["recall_at_k_item_queries"]), "stock": stock_recall(folder)}
            for system, repository in (("ours", folder / "model_repository"), ("stock", folder / "stock_repository")):
                for row in measure(system, repository, folder, args.concurrency, args.repeats, args.duration):
                    rows.append({"catalog": catalog, **row, "recall_at_10": recalls[system][0],
                                 "recall_at_10_item_queries": recalls[system][1],
                                 "index": f"{index['kind']} {index['params']}" if system == "ours" else "IVF32,Flat nprobe 8"})

    print(f"\n{'catalog':>9} {'system':<6} {'conc':>4} {'req/s':>8} {'(min-max)':>15} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'RSS MB':>7} {'recall@10':>9} {'(items)':>8} {'ours/stock':>10}")
    for row in rows:
        stock = next(r for r in rows if r["catalog"] == row["catalog"] and r["system"] == "stock"
                     and r["concurrency"] == row["concurrency"])
        ratio = f"{row['rps'] / stock['rps']:.1f}x" if row["system"] == "ours" else ""
        print(f"{row['catalog']:>9,} {row['system']:<6} {row['concurrency']:>4} {row['rps']:>8.1f} "
              f"{row['rps_min']:>7.1f}-{row['rps_max']:<7.1f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
              f"{row['rss_mb']:>7.0f} {row['recall_at_10']:>9.4f} {row['recall_at_10_item_queries']:>8.4f} {ratio:>10}")
    report = {
        "rows": rows,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        "tritonserver 2.51 (nvidia-pytriton 0.7.0, CPU, Python backend); client on the same machine",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"rows": args.rows, "repeats": args.repeats, "duration_s": args.duration, "users_per_request": 1},
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['minutes']} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
