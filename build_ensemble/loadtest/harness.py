"""Load-test harness: drive a served retrieval model with real user ids and measure it.

Closed loop (``concurrency`` workers, each sending its next request when the last one is
answered) or open loop (``rate`` requests per second, latency counted from the scheduled
send time). Per level: throughput, latency percentiles, errors by kind, and the per-model
time split from Triton's statistics API. Loopback only.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.client import RetrievalClient
from build_ensemble.errors import ConfigError

DEFAULT_CONCURRENCY = (1, 2, 4, 8)  # closed-loop levels when neither concurrency nor rate is given


@dataclass
class LevelResult:
    """What one load level measured (latencies in milliseconds)."""

    protocol: str
    concurrency: int | None
    rate: float | None
    seconds: float
    requests: int
    ok: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)  # answers per model version
    models: dict = field(default_factory=dict)
    server_rss_mb: float | None = None


def levels(concurrency: list | None, rate: list | None) -> list:
    """The load levels to run, ``[("concurrency", c) ..., ("rate", r) ...]``: the closed-loop
    :data:`DEFAULT_CONCURRENCY` when neither is given."""
    if not concurrency and not rate:
        concurrency = list(DEFAULT_CONCURRENCY)
    return [("concurrency", c) for c in concurrency or []] + [("rate", r) for r in rate or []]


def require_loopback(url: str) -> None:
    """Refuse any target that is not a loopback address.

    Raises:
        ConfigError: naming the address.
    """
    host = url.rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise ConfigError(f"cannot resolve {host!r}") from None
    if not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise ConfigError(f"load tests only target loopback addresses; {host!r} resolves to {sorted(addresses)}")


class UserIds:
    """Request ids: known users of a build mixed with a share of unknown ones.

    Args:
        build_dir: build folder (its ``user_features.parquet`` gives the known ids).
        unknown_share: fraction of requests for ids no feature row has.
        seed: seed of the draw.
    """

    def __init__(self, build_dir: str | Path, unknown_share: float = 0.0, seed: int = 0):
        if not 0 <= unknown_share <= 1:
            raise ConfigError(f"unknown_share: got {unknown_share}, expected 0..1")
        self.known = pd.read_parquet(Path(build_dir) / C.USER_FEATURES_FILE, columns=[C.USER_ID])[C.USER_ID].to_numpy()
        self.strings = self.known.dtype == object
        self.first_unknown = 0 if self.strings else int(self.known.max()) + 1
        self.unknown_share = unknown_share
        self.seed = seed

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``[n]`` ids: int64, or strings for a build of string ids (unknown ones ``unknown-<n>``)."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        ids = rng.choice(self.known, n)
        unknown = rng.random(n) < self.unknown_share
        drawn = self.first_unknown + rng.integers(0, 10**6, int(unknown.sum()))
        ids[unknown] = [f"unknown-{d}" for d in drawn] if self.strings else drawn
        return ids if self.strings else ids.astype(np.int64)


def _error_kind(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    return f"{type(exc).__name__}:{status}" if status else type(exc).__name__


def model_statistics(client: RetrievalClient) -> dict:
    """Cumulative per-model counts and nanoseconds from Triton's statistics API."""
    raw = client.client.get_inference_statistics(**({"as_json": True} if client.protocol == "grpc" else {}))
    stats = {}
    for model in raw.get("model_stats", []):
        phases = model.get("inference_stats", {})
        stats[model["name"]] = {
            "count": int(phases.get("success", {}).get("count", 0)),
            "executions": int(model.get("execution_count", 0)),
            **{p: int(phases.get(p, {}).get("ns", 0)) for p in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    return stats


def per_model_split(before: dict, after: dict) -> dict:
    """Milliseconds per request in each phase, and the mean batch size, per model over a level."""
    split = {}
    for name, end in after.items():
        start = before.get(name, {})
        count = end["count"] - start.get("count", 0)
        if count <= 0:
            continue
        executions = max(1, end["executions"] - start.get("executions", 0))
        split[name] = {
            "requests": count,
            "mean_batch": round(count / executions, 2),
            **{f"{p}_ms": round((end[p] - start.get(p, 0)) / count / 1e6, 3)
               for p in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    return split


def process_tree(pid: int) -> list:
    """A process and all its descendants (the server and its backend stubs), as ``/proc`` folders."""
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(Path(f"/proc/{current}"))
        todo.extend(c for c in children.get(current, []) if Path(f"/proc/{c}") not in tree)
    return tree


def _status_kb(process: Path, field: str, file: str = "status") -> int:
    try:
        text = (process / file).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def process_tree_rss_mb(pid: int) -> float | None:
    """Resident memory of a process and all its descendants (shared pages counted in each process)."""
    if not Path(f"/proc/{pid}").exists():
        return None
    return round(sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024, 1)


def process_tree_pss_mb(pid: int) -> float | None:
    """Proportional set size of a process tree: each shared page counted once in all (a memory-mapped
    index shared by two backend instances counts once here, twice in the RSS)."""
    if not Path(f"/proc/{pid}").exists():
        return None
    return round(sum(_status_kb(p, "Pss", "smaps_rollup") for p in process_tree(pid)) / 1024, 1)


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process tree (its live members)."""
    ticks = 0
    for process in process_tree(pid):
        try:
            fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_level(
    url: str,
    protocol: str,
    ids: UserIds,
    concurrency: int | None = None,
    rate: float | None = None,
    duration: float = 10.0,
    requests: int | None = None,
    users_per_request: int = 1,
    server_pid: int | None = None,
    model: str = C.MODEL_NAME,
    stop: threading.Event | None = None,
) -> LevelResult:
    """Drive one load level and measure it.

    Args:
        url: ``host:port`` on loopback.
        protocol: ``grpc`` or ``http``.
        ids: where request user ids come from.
        concurrency: closed loop with this many workers (or None with ``rate``).
        rate: open loop at this many requests per second.
        duration: seconds to run (ignored when ``requests`` is given).
        requests: stop after this many requests.
        users_per_request: user ids per request.
        server_pid: tritonserver's pid, to report its memory.
        model: Triton model to call.
        stop: ends the level early when set (e.g. by a test that rolls a new version under load).
    """
    require_loopback(url)
    if (concurrency is None) == (rate is None):
        raise ConfigError("give exactly one of concurrency or rate")
    workers = concurrency or max(4, min(64, int(rate * 0.05) + 1))
    pool = ids.sample(200_000)
    latencies: list = []
    errors: Counter = Counter()
    versions: Counter = Counter()
    lock = threading.Lock()
    counter = {"sent": 0}
    start = time.perf_counter()
    deadline = start + duration

    def next_ticket():
        with lock:
            number = counter["sent"]
            if stop is not None and stop.is_set():
                done = True
            elif requests is not None:
                done = number >= requests
            else:  # open loop: stop at the last request scheduled within the duration
                done = number / rate >= duration if rate else time.perf_counter() >= deadline
            if done:
                return None
            counter["sent"] += 1
        return number

    def work(worker: int) -> None:
        with RetrievalClient(url, protocol, model) as client:
            while (number := next_ticket()) is not None:
                scheduled = start + number / rate if rate else time.perf_counter()
                if rate:
                    time.sleep(max(0.0, scheduled - time.perf_counter()))
                batch = pool[(number * users_per_request) % len(pool):][:users_per_request]
                try:
                    client.infer(batch)
                    elapsed = time.perf_counter() - scheduled
                    with lock:
                        latencies.append(elapsed)
                        versions[client.last_version] += 1
                except Exception as exc:  # noqa: BLE001  counted by kind, the load goes on
                    with lock:
                        errors[_error_kind(exc)] += 1

    with RetrievalClient(url, protocol, model) as control:
        before = model_statistics(control)
        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
        for thread in threads:
            thread.start()
        rss = []
        while any(t.is_alive() for t in threads):
            if server_pid:
                rss.append(process_tree_rss_mb(server_pid))
            for thread in threads:
                thread.join(timeout=0.5)
        seconds = time.perf_counter() - start
        after = model_statistics(control)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return LevelResult(
        protocol=protocol,
        concurrency=concurrency,
        rate=rate,
        seconds=round(seconds, 2),
        requests=len(latencies) + sum(errors.values()),
        ok=len(latencies),
        rps=round(len(latencies) / seconds, 1),
        p50_ms=round(float(np.percentile(ms, 50)), 3),
        p90_ms=round(float(np.percentile(ms, 90)), 3),
        p99_ms=round(float(np.percentile(ms, 99)), 3),
        max_ms=round(float(np.max(ms)), 3),
        errors=dict(errors),
        versions=dict(versions),
        models=per_model_split(before, after),
        server_rss_mb=max([r for r in rss if r is not None], default=None),
    )


def write_results(results: list, folder: str | Path, name: str = "loadtest") -> dict:
    """Write ``<name>.json``, ``<name>.csv`` and ``<name>.png`` (latency against throughput)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv", "png": folder / f"{name}.png"}
    paths["json"].write_text(json.dumps({"levels": rows}, indent=2) + "\n")
    columns = [k for k in rows[0] if k not in ("errors", "versions", "models")] + ["errors"]
    with paths["csv"].open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "errors": ";".join(f"{k}={v}" for k, v in row["errors"].items())})
    fig, axis = plt.subplots(figsize=(6, 4))
    for protocol in sorted({r.protocol for r in results}):
        level = [r for r in results if r.protocol == protocol]
        for percentile, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            axis.plot([r.rps for r in level], [getattr(r, percentile) for r in level], style,
                      label=f"{protocol} {percentile[:3]}")
        for r in level:
            axis.annotate(f"c={r.concurrency}" if r.concurrency else f"{r.rate:g}/s", (r.rps, r.p99_ms), fontsize=7)
    axis.set(xlabel="throughput (requests/s)", ylabel="latency (ms)", title="retrieval: latency vs throughput")
    axis.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths


def format_table(results: list) -> str:
    """A plain-text table of the levels with the per-model split."""
    lines = [f"{'protocol':<8} {'level':>8} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"]
    for r in results:
        level = f"c={r.concurrency}" if r.concurrency else f"{r.rate:g}/s"
        lines.append(f"{r.protocol:<8} {level:>8} {r.rps:>9.1f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} "
                     f"{r.max_ms:>8.2f} {sum(r.errors.values()):>7}")
        for model, split in r.models.items():
            lines.append(f"{'':<8} {model}: batch {split['mean_batch']}, queue {split['queue_ms']} ms, "
                         f"infer {split['compute_infer_ms']} ms per request")
    return "\n".join(lines)
