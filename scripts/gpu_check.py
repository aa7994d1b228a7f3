"""GPU FAISS against the CPU index: recall@10 and latency of exact (flat) and IVF search at 1M
and 10M items, the way the serving graph searches (inner product; IVF over items augmented
with ``sqrt(max_norm^2 - |x|^2)`` and searched by L2, see build_ensemble/serving/index.py).

Needs only NumPy and a faiss wheel (``faiss-gpu-cu12`` on a GPU machine, ``faiss-cpu``
elsewhere): no Merlin, no TensorFlow, no package of this project, so it runs on a bare GPU
machine with Python 3.12 and the two wheels.

    python scripts/gpu_check.py                          # 1M and 10M synthetic items, 64-d
    python scripts/gpu_check.py --items 1000000 --embeddings item_embeddings.npy
    python scripts/gpu_check.py --items 20000 --cpu-only # a dry run without a GPU

Items are drawn around 4,096 centres (a clustered catalog, like trained embeddings); the
user-like queries around other centres of the same spread (with ``--embeddings`` they are
still synthetic, so pass a build's item vectors and read the item-query column), plus as many
item vectors. It measures faiss itself, not the serving graph's GPU load path
(``build_ensemble.serving.index.load_index``). Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import faiss
import numpy as np

K = 10


def catalog(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4096, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1_000_000):  # in chunks: 10M x 64 floats of noise at once is 5 GB
        stop = min(n, start + 1_000_000)
        out[start:stop] = centres[rng.integers(0, 4096, stop - start)] + rng.normal(size=(stop - start, dim))
    return out / np.sqrt(dim)


def augment(x: np.ndarray, max_norm: float) -> np.ndarray:
    extra = np.sqrt(np.maximum(max_norm**2 - (x * x).sum(axis=1), 0))[:, None]
    return np.ascontiguousarray(np.hstack([x, extra]), dtype=np.float32)


def recall(found: np.ndarray, truth_scores: np.ndarray, queries: np.ndarray, items: np.ndarray) -> float:
    """Share of returned items whose exact score reaches the exact k-th best (ties count as hits)."""
    scores = np.einsum("qd,qkd->qk", queries, items[np.maximum(found, 0)])
    kth = truth_scores[:, K - 1 : K]
    return float(((scores >= kth - 1e-5 * np.maximum(1, np.abs(kth))) & (found >= 0)).mean())


def timed(index, queries: np.ndarray, batch: int) -> float:
    """Milliseconds per search call of ``batch`` queries (median over calls, after a warm-up)."""
    index.search(queries[:batch], K)
    times = []
    for start in range(0, min(len(queries), 100 * batch), batch):
        t = time.perf_counter()
        index.search(queries[start : start + batch], K)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def measure(name: str, index, queries: np.ndarray, truth: list, items: np.ndarray, augmented: bool) -> dict:
    row = {"index": name}
    for label, q, t in (("users", queries[0], truth[0]), ("items", queries[1], truth[1])):
        search_q = np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)]) if augmented else q
        _, found = index.search(search_q, K)
        row[f"recall_{label}"] = round(recall(found, t, q, items), 4)
    single = np.hstack([queries[0], np.zeros((len(queries[0]), 1), dtype=np.float32)]) if augmented else queries[0]
    row["ms_1_query"] = round(timed(index, single, 1), 3)
    row["ms_256_queries"] = round(timed(index, single, 256), 3)
    row["queries_s"] = round(256 / row["ms_256_queries"] * 1e3)
    return row


def check(n: int, dim: int, queries_n: int, gpu: bool, nprobes: list, embeddings: str | None) -> list:
    items = np.load(embeddings, mmap_mode="r")[:n].astype(np.float32) if embeddings else catalog(n, dim)
    n, dim = items.shape
    rng = np.random.default_rng(1)
    queries = [catalog(queries_n, dim, seed=2), items[rng.permutation(n)[:queries_n]]]
    started = time.perf_counter()
    exact = faiss.IndexFlatIP(dim)
    exact.add(items)
    truth = [exact.search(q, K)[0] for q in queries]
    print(f"{n:,} items: exact truth in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    rows = [{"items": n, "device": "cpu", **measure("flat", exact, queries, truth, items, False)}]
    resources = faiss.StandardGpuResources() if gpu else None
    if gpu:
        rows.append({"items": n, "device": "gpu", **measure("flat", faiss.index_cpu_to_gpu(resources, 0, exact), queries, truth, items, False)})
    del exact
    max_norm = float(np.sqrt((items * items).sum(axis=1).max()))
    augmented = augment(items, max_norm)
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 1), dim + 1, nlist, faiss.METRIC_L2)
    started = time.perf_counter()
    train = augmented[np.sort(rng.permutation(n)[: nlist * 64])]
    if gpu:  # k-means on the GPU, then the trained index back to the CPU
        trained = faiss.index_cpu_to_gpu(resources, 0, ivf)
        trained.train(train)
        ivf = faiss.index_gpu_to_cpu(trained)
    else:
        ivf.train(train)
    ivf.add(augmented)
    print(f"IVF{nlist} trained and filled in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    devices = [("cpu", ivf)] + ([("gpu", faiss.index_cpu_to_gpu(resources, 0, ivf))] if gpu else [])
    for device, index in devices:
        for nprobe in nprobes:
            if nprobe > nlist:
                continue
            space = faiss.GpuParameterSpace() if device == "gpu" else faiss.ParameterSpace()
            space.set_index_parameter(index, "nprobe", nprobe)
            rows.append({"items": n, "device": device, **measure(f"IVF{nlist},Flat nprobe {nprobe}", index, queries, truth, items, True)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--embeddings", help="a .npy of [n, dim] float32 item embeddings instead of synthetic ones")
    parser.add_argument("--cpu-only", action="store_true", help="measure the CPU index only (a dry run without a GPU)")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not args.cpu_only and gpus == 0:
        sys.exit("faiss sees no GPU (faiss-cpu, or no device): install faiss-gpu-cu12 on a GPU machine, or pass --cpu-only")
    rows = []
    for n in args.items:
        rows += check(n, args.dim, args.queries, not args.cpu_only, args.nprobe, args.embeddings)
    print(f"\n{'items':>11} {'device':<6} {'index':<28} {'recall users':>12} {'recall items':>12} {'ms/1 query':>10} "
          f"{'ms/256':>8} {'queries/s':>10}")
    for r in rows:
        print(f"{r['items']:>11,} {r['device']:<6} {r['index']:<28} {r['recall_users']:>12.4f} {r['recall_items']:>12.4f} "
              f"{r['ms_1_query']:>10.3f} {r['ms_256_queries']:>8.2f} {r['queries_s']:>10,}")
    report = {"rows": rows, "gpus": gpus, "faiss": faiss.__version__, "python": platform.python_version(),
              "machine": platform.platform(), "k": K}
    with open(args.out, "w") as out:
        json.dump(report, out, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
