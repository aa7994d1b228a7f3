"""Feast online stores side by side: SQLite (a file) against Redis (a real redis-server on loopback).

For each store: a feature repository written like the build writes it (N users with 6
features, 10,000 items), `feast apply`, materialization time, then the latency of the
serving path's lookup (`OnlineReader.read`) for 1 and for 32 users, in the same run.

    .venv/bin/python scripts/bench_online_store.py                  # 100,000 users
    .venv/bin/python scripts/bench_online_store.py --users 1000000

Prints a table and writes benchmarks/online_store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble import feature_store as fs
from build_ensemble.serving.online_store import OnlineReader, open_store

ROOT = Path(__file__).resolve().parents[1]


def tables(users: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    user_table = pd.DataFrame({
        C.USER_ID: np.arange(users, dtype=np.int64),
        "age_bucket": rng.integers(0, 7, users),
        "gender": rng.choice(["F", "M"], users),
        "occupation": rng.choice([f"job{i}" for i in range(21)], users),
        "zip_prefix": rng.choice([f"{i:02d}" for i in range(100)], users),
        "segment": rng.integers(0, 1000, users),
        "city": rng.choice([f"city{i}" for i in range(500)], users),
    })
    items = pd.DataFrame({C.ITEM_ID: np.arange(10_000, dtype=np.int64), "category": rng.integers(0, 100, 10_000)})
    return user_table, items


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--dir",
                                str(folder), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            fs.check_redis(f"redis://127.0.0.1:{port}/0", timeout=1)
            return process, port
        except Exception:  # noqa: BLE001  not up yet
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def latency_ms(reader: OnlineReader, users: int, batch: int, repeats: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    reader.read(np.arange(batch, dtype=np.int64))  # warm-up
    times = []
    for _ in range(repeats):
        ids = rng.integers(0, users, batch).astype(np.int64)
        start = time.perf_counter()
        reader.read(ids)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def measure(kind: str, folder: Path, users: pd.DataFrame, items: pd.DataFrame, redis_url: str | None, repeats: int) -> dict:
    stamp = datetime.now(timezone.utc).replace(microsecond=0)
    repo = fs.write_repo(folder / kind, users, items, stamp, kind, redis_url)
    fs.apply_repo(repo)
    start = time.perf_counter()
    fs.materialize_repo(repo, stamp)
    seconds = time.perf_counter() - start
    features = [c for c in users.columns if c != C.USER_ID]
    reader = OnlineReader(open_store(repo), C.USER_VIEW, C.USER_ID, features)
    row = {"store": kind, "users": len(users), "materialize_s": round(seconds, 2),
           "rows_per_s": round((len(users) + len(items)) / seconds)}
    for batch in (1, 32):
        row[f"batch_{batch}"] = latency_ms(reader, len(users), batch, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "online_store.json"))
    args = parser.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")

    users, items = tables(args.users)
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        folder = Path(tmp)
        redis, port = start_redis(folder)
        try:
            rows = [measure("sqlite", folder, users, items, None, args.repeats),
                    measure("redis", folder, users, items, f"redis://127.0.0.1:{port}/0", args.repeats)]
        finally:
            redis.terminate()
            redis.wait(timeout=30)
    report = {"rows": rows, "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'store':<7} {'users':>9} {'materialize s':>14} {'rows/s':>8} {'1 user p50/p99 ms':>19} {'32 users p50/p99 ms':>21}")
    for r in rows:
        print(f"{r['store']:<7} {r['users']:>9,} {r['materialize_s']:>14.1f} {r['rows_per_s']:>8,} "
              f"{r['batch_1']['p50_ms']:>9.3f}/{r['batch_1']['p99_ms']:<9.3f} {r['batch_32']['p50_ms']:>10.3f}/{r['batch_32']['p99_ms']:<9.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
