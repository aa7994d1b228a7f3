"""Serving benchmark: Triton's floor, our ensemble and the stock merlin-systems graph, in one run.

For each catalog size, builds through the real pipeline (synthetic Ali-CCP with that many
items: item features -> item tower -> embeddings -> index chosen by measurement), exports the
stock graph from the same artifacts (scripts/stock_ensemble.py), and serves three systems on
the same tritonserver build, one at a time:

- ``floor``: a trivial Python-backend model with our model's config that returns fixed ids
  (scripts/floor_model.py): what any Python-backend model costs here;
- ``ours``: the build's repository;
- ``stock``: the stock graph (skipped above ``--stock-max`` items: it cannot build its
  in-memory Feast/IVF32 set-up there in reasonable time).

Each is driven over gRPC by the load-test harness (loopback, real user ids; one user per
request at each ``--concurrency``, then 32 users per request at the highest), each level
repeated, medians reported with the spread; floor and ours also by perf_analyzer at the same
levels. Every level records the profile: the model's own per-stage timers
(``retrieval_stage_seconds``), Triton's queue/compute split, and the CPU time of the server
(process tree) and of the client (this process) per request. At ``--variants-at`` items (1M,
the size the targets are set at) it also measures ours with 2 backend instances against the
default 1 (RSS and PSS) and the dynamic batcher's queue delay.

    .venv/bin/python scripts/bench_serving.py                         # 10k, 100k, 1M, 10M items
    .venv/bin/python scripts/bench_serving.py --catalogs 10000 --repeats 1 --duration 3
    .venv/bin/python scripts/bench_serving.py --work /tmp/bench  # keeps the builds, a rerun reuses them
    .venv/bin/python scripts/bench_serving.py --table                 # README table of benchmarks/serving.json

Prints a table and writes benchmarks/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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
from build_ensemble.loadtest import perf_analyzer  # noqa: E402
from build_ensemble.serving.metrics import STAGE_SECONDS  # noqa: E402
from build_ensemble.server.launch import ServerSpec, TritonServer  # noqa: E402
from stock_ensemble import export_stock  # noqa: E402

MODELS = {"floor": "floor", "ours": C.MODEL_NAME, "stock": "executor_model"}
BATCH_USERS = 32
QUEUE_DELAYS_US = (0, 100, 500)
PREFERRED_BATCH_SIZES = (4, 8)  # the mean batch at concurrency 8 is about 4


def build(catalog: int, rows: int, folder: Path) -> None:
    cli = Path(sys.executable).parent / "build-ensemble"
    cmd = [str(cli), "build", "--rows", str(rows), "--items", str(catalog), "--epochs", "1",
           "--out", str(folder / "artifacts"), "--feature-repo", str(folder / "feature_repo"),
           "--repository", str(folder / "model_repository")]
    with open(folder / "build.log", "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"build of {catalog} items failed: see {folder / 'build.log'}")


def floor_repository(ours: Path, out: Path) -> Path:
    """A repository holding only ``floor``: our model's config.pbtxt (inputs, outputs, batcher) renamed."""
    config = (ours / C.MODEL_NAME / "config.pbtxt").read_text()
    (out / "floor" / "1").mkdir(parents=True)
    (out / "floor" / "config.pbtxt").write_text(config.replace(f'name: "{C.MODEL_NAME}"', 'name: "floor"', 1))
    shutil.copy(ROOT / "scripts" / "floor_model.py", out / "floor" / "1" / "model.py")
    return out


def variant(ours: Path, out: Path, instances: int | None = None, queue_delay_us: int | None = None,
            preferred_batch_size: int | None = None) -> Path:
    """A copy of our repository with another instance count or dynamic-batcher queue delay (and
    preferred batch size, which only matters with a delay: the batcher waits for it)."""
    shutil.copytree(ours, out)
    path = out / C.MODEL_NAME / "config.pbtxt"
    config = path.read_text()
    if instances is not None:
        config = re.sub(r"count: \d+", f"count: {instances}", config)
    if queue_delay_us is not None:
        preferred = f"  preferred_batch_size: {preferred_batch_size}\n" if preferred_batch_size else ""
        config = re.sub(r"dynamic_batching \{[^}]*\}",
                        f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {queue_delay_us}\n}}", config)
    path.write_text(config)
    return out


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


def stage_totals(metrics_url: str) -> dict:
    """``{stage: (seconds, batches)}`` from the model's ``retrieval_stage_seconds`` on Triton's /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    totals: dict = {}
    for part, index in (("sum", 0), ("count", 1)):
        for stage, value in re.findall(rf'^{STAGE_SECONDS}_{part}{{[^}}]*stage="(\w+)"[^}}]*}} (\S+)$', text, re.M):
            totals.setdefault(stage, [0.0, 0.0])[index] += float(value)
    return totals


class Profile:
    """What one level cost: per-stage model time, server and client CPU, per request."""

    def __init__(self, server: TritonServer, staged: bool):
        self.server, self.staged = server, staged
        self.metrics_url = f"http://127.0.0.1:{server.spec.metrics_port}/metrics"

    def __enter__(self):
        self.stages = stage_totals(self.metrics_url) if self.staged else {}
        self.server_cpu = loadtest.process_tree_cpu_s(self.server.pid)
        self.client_cpu = sum(os.times()[:2])
        return self

    def result(self, requests: int, mean_batch: float) -> dict:
        """Per request; stage times from the sampled batches' mean (the model records one batch in
        8) divided by the level's mean batch size."""
        n = max(1, requests)
        out = {"server_cpu_ms": round((loadtest.process_tree_cpu_s(self.server.pid) - self.server_cpu) / n * 1e3, 3),
               "client_cpu_ms": round((sum(os.times()[:2]) - self.client_cpu) / n * 1e3, 3)}
        if self.staged:
            after = stage_totals(self.metrics_url)
            per_batch = {s: (v[0] - self.stages.get(s, [0, 0])[0]) / max(1, v[1] - self.stages.get(s, [0, 0])[1])
                         for s, v in after.items()}
            out["stage_ms_per_batch"] = {s: round(v * 1e3, 4) for s, v in per_batch.items()}
            out["stage_ms"] = {s: round(v * 1e3 / max(mean_batch, 1.0), 4) for s, v in per_batch.items()}
        return out

    def __exit__(self, *exc):
        return False


def measure(system: str, repository: Path, folder: Path, levels: list, repeats: int, duration: float,
            with_perf_analyzer: bool, batch: bool = True, verify: bool = False) -> list:
    """Harness levels (1 user per request, then 32 at the highest concurrency) and perf_analyzer ones."""
    spec = ServerSpec(repository=str(repository), state_dir=str(folder / f".serve-{system}"),
                      http_port=18000, grpc_port=18001, metrics_port=18002, verify=verify)
    ids = loadtest.UserIds(folder / "artifacts")
    model = MODELS[system]
    rows = []
    plan = [(c, 1) for c in levels] + ([(max(levels), BATCH_USERS)] if batch else [])
    with TritonServer(spec) as server:
        loadtest.run_level(spec.grpc_url, "grpc", ids, concurrency=1, duration=2, model=model)  # warm-up
        for concurrency, users in plan:
            runs, profiles = [], []
            for _ in range(repeats):
                with Profile(server, staged=system == "ours") as profile:
                    runs.append(loadtest.run_level(spec.grpc_url, "grpc", ids, concurrency=concurrency, duration=duration,
                                                   users_per_request=users, server_pid=server.pid, model=model))
                profiles.append(profile.result(runs[-1].requests, runs[-1].models.get(model, {}).get("mean_batch", 1.0)))
            rps = [r.rps for r in runs]
            middle = sorted(range(repeats), key=lambda i: rps[i])[repeats // 2]
            rows.append({
                "system": system, "client": "harness", "protocol": "grpc", "concurrency": concurrency,
                "users_per_request": users, "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "users_s": round(statistics.median(rps) * users, 1),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "p99_ms_max": max(r.p99_ms for r in runs),
                "errors": sum(sum(r.errors.values()) for r in runs),
                "rss_mb": max(r.server_rss_mb or 0 for r in runs),
                "pss_mb": loadtest.process_tree_pss_mb(server.pid),
                "models": runs[middle].models, "profile": profiles[middle],
            })
            log(f"{system} c={concurrency} x{users}: {rows[-1]['rps']:.1f} req/s, p50 {rows[-1]['p50_ms']:.2f} ms, "
                f"p99 {rows[-1]['p99_ms']:.2f} ms, RSS {rows[-1]['rss_mb']:.0f} MB, {profiles[middle]}")
        if with_perf_analyzer:
            data = perf_analyzer.write_input_data(folder / "perf_input.json", ids.sample(1000))
            for concurrency in levels:
                result = perf_analyzer.run(spec.grpc_url, "grpc", data, concurrency, folder / f"pa-{system}-{concurrency}.csv",
                                           model=model)
                rows.append({"system": system, "client": "perf_analyzer", "protocol": "grpc", "users_per_request": 1,
                             **result, "rss_mb": loadtest.process_tree_rss_mb(server.pid)})
                log(f"{system} perf_analyzer c={concurrency}: {result}")
    return rows


def log(message: str) -> None:
    print(f"    {message}", file=sys.stderr, flush=True)


BUILT = ("artifacts", "feature_repo", "model_repository", "build.log", "build.json", "export.log")


def export(folder: Path) -> None:
    """Export ``folder``'s build afresh into ``folder/model_repository`` (this commit's graph and config)."""
    cli = Path(sys.executable).parent / "build-ensemble"
    shutil.rmtree(folder / "model_repository", ignore_errors=True)
    cmd = [str(cli), "export", "--out", str(folder / "artifacts"), "--repository", str(folder / "model_repository"),
           "--feature-repo", str(folder / "feature_repo")]
    with open(folder / "export.log", "w") as log_file:
        if subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"export of {folder} failed: see {folder / 'export.log'}")


def built(catalog: int, rows: int, folder: Path) -> dict:
    """Build the catalog in ``folder``, or reuse the build a run with ``--work`` left there with
    the same rows (whatever commit made it: the record says which) and export it again, so that
    its repository is this commit's; everything else in the folder (repositories, server state)
    is made afresh. Returns ``build.json``: rows, seconds, commit."""
    record = folder / "build.json"
    if record.exists() and json.loads(record.read_text())["rows"] == rows:
        log(f"==> {catalog:,} items: the build in {folder} reused ({json.loads(record.read_text())}), exported again")
        export(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log(f"==> {catalog:,} items: build")
        started = time.perf_counter()
        build(catalog, rows, folder)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        record.write_text(json.dumps({"rows": rows, "build_s": round(time.perf_counter() - started, 1),
                                      "commit": commit.stdout.strip() or None}))
    for path in folder.iterdir():
        if path.name not in BUILT:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return json.loads(record.read_text())


def catalog_rows(catalog: int, args, work: Path, with_variants: bool) -> list:
    folder = work / f"items{catalog}"
    build_record = built(catalog, args.rows, folder)
    built_manifest = json.loads((folder / "artifacts" / C.MANIFEST_FILE).read_text())
    index = built_manifest["index"]
    systems = {"floor": floor_repository(folder / "model_repository", folder / "floor_repository"),
               "ours": folder / "model_repository"}
    recalls = {"floor": (None, None), "ours": (index["recall_at_k"], index["recall_at_k_item_queries"])}
    if catalog <= args.stock_max:
        export_stock(folder / "artifacts", folder / "feature_repo", folder / "stock_repository")
        systems["stock"], recalls["stock"] = folder / "stock_repository", stock_recall(folder)
    rows = []
    for system, repository in systems.items():
        for row in measure(system, repository, folder, args.concurrency, args.repeats, args.duration,
                           with_perf_analyzer=system != "stock", verify=system == "ours"):
            rows.append({"catalog": catalog, **row, "recall_at_10": recalls[system][0],
                         "recall_at_10_item_queries": recalls[system][1],
                         "index": {"ours": f"{index['kind']} {index['params']}", "stock": "IVF32,Flat nprobe 8"}.get(system)})
    rows[0].update(build_s=build_record["build_s"], build_commit=build_record["commit"],
                   build_stages_s=built_manifest.get("timings_seconds"))
    rows[0]["index_candidates"] = index.get("candidates", [])
    if with_variants:
        rows += variants(catalog, folder, args)
    return rows


def variant_rows(args, work: Path) -> list:
    """``--only-variants``: the variants of the build at ``--variants-at`` items, nothing else."""
    folder = work / f"items{args.variants_at}"
    built(args.variants_at, args.rows, folder)
    return variants(args.variants_at, folder, args)


def variants(catalog: int, folder: Path, args) -> list:
    """Ours with 2 backend instances (the default is 1), with each dynamic-batcher queue delay, and
    with preferred batch sizes under a delay (one repeat each)."""
    rows = []
    settings = ([{"instances": 2}] + [{"queue_delay_us": d} for d in QUEUE_DELAYS_US]
                + [{"queue_delay_us": 500, "preferred_batch_size": b} for b in PREFERRED_BATCH_SIZES])
    for setting in settings:
        repository = variant(folder / "model_repository", folder / f"variant-{len(rows)}", **setting)
        levels = [max(args.concurrency)] if "instances" in setting else args.concurrency
        for row in measure("ours", repository, folder, levels, 1, args.duration, with_perf_analyzer=False, batch=False):
            rows.append({"catalog": catalog, **row, "variant": setting})
    return rows


def markdown(report: dict) -> str:
    """The README's table: every harness row with its ratio to the floor and to stock."""
    rows = [r for r in report["rows"] if "variant" not in r]
    lines = ["| catalog | system | client | users/request | c | req/s | users/s | p50 ms | p99 ms | server RSS MB "
             "| of floor's req/s | ours/stock req/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def same(system):
            return next((o for o in rows if o["catalog"] == r["catalog"] and o["system"] == system
                         and o["client"] == r["client"] and o["concurrency"] == r["concurrency"]
                         and o["users_per_request"] == r["users_per_request"]), None)
        floor, stock = same("floor"), same("stock")
        of_floor = f"{r['rps'] / floor['rps']:.0%}" if floor and r["system"] != "floor" else ""
        of_stock = f"{r['rps'] / stock['rps']:.0f}×" if stock and r["system"] == "ours" else ""
        lines.append(f"| {r['catalog']:,} | {r['system']} | {r['client']} | {r['users_per_request']} | {r['concurrency']} "
                     f"| {r['rps']:,.0f} | {r['rps'] * r['users_per_request']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['rss_mb'] or 0:,.0f} | {of_floor} | {of_stock} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", nargs="+", type=int, default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic interaction rows per build")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured level")
    parser.add_argument("--variants-at", type=int, default=1_000_000,
                        help="catalog at which the instance count and the batcher's queue delay are varied")
    parser.add_argument("--only-variants", action="store_true",
                        help="measure only the variants at --variants-at (write them to another --out)")
    parser.add_argument("--stock-max", type=int, default=1_000_000, help="largest catalog the stock graph is built for")
    parser.add_argument("--work", help="keep the builds in this folder, and reuse those a run left there (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "serving.json"))
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for catalog in [] if args.only_variants else args.catalogs:
            rows += catalog_rows(catalog, args, Path(args.work or tmp), with_variants=catalog == args.variants_at)
        if args.only_variants:
            rows = variant_rows(args, Path(args.work or tmp))
    report = {
        "rows": rows,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        "tritonserver 2.51 (nvidia-pytriton 0.7.0, CPU, Python backend); client on the same machine",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"rows": args.rows, "repeats": args.repeats, "duration_s": args.duration,
                     "concurrency": args.concurrency, "batch_users": BATCH_USERS, "stock_max": args.stock_max,
                     "variants_at": args.variants_at},
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {args.out} ({report['minutes']} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
