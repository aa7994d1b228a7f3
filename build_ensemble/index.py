"""FAISS index over the item embeddings (inner product, the model's score), keyed by raw item id.

Every approximate kind has its search-time parameter (``nprobe`` / ``efSearch``) doubled until
recall@k against exact search reaches the target, on real user vectors and on item vectors,
then narrowed down by bisection to within 1/8 of the smallest value that does.
``auto`` builds every kind of :data:`CANDIDATES` that way, times a single-query search of
each, and keeps the fastest that reaches the target; exact search stays unless an
approximate index saves at least :data:`EXACT_MARGIN_MS` per query. Each candidate's
recall, latency and build time go into ``index.json`` and the build manifest.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from build_ensemble import constants as C
from build_ensemble.artifacts import StageResult, item_popularity, raw_ids, read_embeddings
from build_ensemble.config import BuildConfig
from build_ensemble.prepared import PreparedData
from build_ensemble.serving.index import INDEX_FILE, INFO_FILE, ITEM_IDS_FILE, IVF_DATA_FILE, POPULAR_FILE, ROW_IDS_FILE, VECTORS_FILE, IndexInfo, ItemIndex, gpu_count, set_search_params

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
# What auto measures, with the catalog sizes each is tried at (both ends included; None: no limit).
# IVF-PQ needs 1,000 items: its 4-bit codes are trained on them, fewer leave too few points per
# code. Above 2M items HNSW's build (193 s at 1M on 2 cores, growing faster than n) and IVF-PQ's
# re-rank tuning (every list probed) cost more than the build's other stages together; there
# auto measures flat and IVF (see docs/scaling.md).
CANDIDATES = {"flat": (1, None), "ivf": (1, None), "hnsw": (1, 2_000_000), "ivfpq": (1000, 2_000_000)}
MAX_IVF_LISTS = 4096  # k-means and list assignment cost n * nlist on the build machine; nprobe is tuned to match
TARGET_RECALL = 0.95
EXACT_MARGIN_MS = 0.1  # what an approximate index must save per query to replace exact search (~5% of a request)
INDEX_QUERIES = 1000  # user vectors the search parameter is tuned on
LATENCY_QUERIES = 200  # single-query searches timed per candidate
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
IVF_TRAIN_POINTS_PER_LIST = 64
PQ_DIMS_PER_CODE = 2  # IVF-PQ fast scan: one 4-bit code per 2 coordinates
KNOB_PRECISION = 8  # the search parameter is tuned to within 1/8 of the smallest that reaches the target
REFINE_FACTOR = 16  # IVF-PQ: exact re-rank of the best k * k_factor codes, k_factor from 16 ...
MAX_REFINE_FACTOR = 256  # ... doubled up to this while the codes miss the target recall


def run(config: BuildConfig, build_dir: Path, out_dir: Path | None = None) -> StageResult:
    """Index the build's item embeddings (``config.index``, tuned for ``config.top_k``) and
    write the popular items the fallback serves.

    Args:
        config: ``index``, ``top_k`` and ``seed`` are used.
        build_dir: build folder holding the embeddings and the training split.
        out_dir: where to write (default: ``build_dir/index``).
    """
    out_dir = out_dir or build_dir / C.INDEX_DIR
    user_ids, users = read_embeddings(build_dir / C.USER_EMBEDDINGS_FILE, C.USER_ID)
    item_ids, items = read_embeddings(build_dir / C.ITEM_EMBEDDINGS_FILE, C.ITEM_ID)
    sample = np.random.default_rng(config.seed).permutation(len(users))[:INDEX_QUERIES]
    index = build_index(items, item_ids, users[np.sort(sample)], config.index, config.top_k, seed=config.seed)
    save_index(index, out_dir)
    train = PreparedData.load(build_dir).read_split("train", [C.ITEM_ID, C.CLICK])
    item_popularity(train, item_ids).head(C.MAX_K).to_parquet(out_dir / POPULAR_FILE, index=False)
    return StageResult([out_dir], {"index": asdict(index.info)})


def satisfies(info: dict, kind: str, top_k: int) -> bool:
    """Whether an index (its ``index.json``) was built as requested and tuned for ``top_k``: of the
    requested kind, or for ``auto`` chosen by measurement (an index of an older build, chosen
    by catalog size, is measured again)."""
    chosen = bool(info.get("candidates")) if kind == "auto" else info["kind"] == kind
    return chosen and info["k"] == min(top_k, info["items"])


def ivf_lists(num_items: int) -> int:
    """Number of IVF lists: about 4 * sqrt(n), a power of two, at least 1 list per 39 items, at
    most :data:`MAX_IVF_LISTS`."""
    target = 4 * math.sqrt(num_items)
    nlist = 2 ** max(0, round(math.log2(target)))
    return int(max(1, min(nlist, num_items // 39, MAX_IVF_LISTS)))


def _augment(embeddings: np.ndarray) -> tuple[np.ndarray, float]:
    """Items as ``[x, sqrt(max_norm^2 - |x|^2)]``: L2 nearest to ``[q, 0]`` = largest ``q . x``."""
    norms = (embeddings * embeddings).sum(axis=1)
    max_norm = float(np.sqrt(norms.max()))
    extra = np.sqrt(np.maximum(max_norm**2 - norms, 0))[:, None].astype(np.float32)
    return np.ascontiguousarray(np.hstack([embeddings, extra])), max_norm


def _make_index(kind: str, embeddings: np.ndarray, ids: np.ndarray, seed: int):
    import faiss

    n, dim = embeddings.shape
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        params = {}
    elif kind == "ivf":
        embeddings, max_norm = _augment(embeddings)
        nlist = ivf_lists(n)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 1), dim + 1, nlist, faiss.METRIC_L2)
        ivf.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(n)[: nlist * IVF_TRAIN_POINTS_PER_LIST]
        ivf.train(embeddings[np.sort(sample)])
        index = faiss.IndexIDMap(ivf)
        params = {"nlist": nlist, "nprobe": 1, "max_norm": max_norm}
    elif kind == "hnsw":
        embeddings, max_norm = _augment(embeddings)
        hnsw = faiss.IndexHNSWFlat(dim + 1, HNSW_M)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap(hnsw)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": 16, "max_norm": max_norm}
    elif kind == "ivfpq":
        embeddings, max_norm = _augment(embeddings)
        width = embeddings.shape[1] + (-embeddings.shape[1]) % PQ_DIMS_PER_CODE  # zero-padded, L2 unchanged
        embeddings = np.ascontiguousarray(np.pad(embeddings, ((0, 0), (0, width - embeddings.shape[1]))))
        nlist, codes = ivf_lists(n), width // PQ_DIMS_PER_CODE
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(width), width, nlist, codes, 4, faiss.METRIC_L2)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(n)[: max(nlist * IVF_TRAIN_POINTS_PER_LIST, 16 * 256)]
        index.train(embeddings[np.sort(sample)])
        index.add(embeddings)  # by row: ItemIndex re-ranks rows with the exact vectors
        return index, {"nlist": nlist, "nprobe": 1, "pq_codes": codes, "k_factor": REFINE_FACTOR, "max_norm": max_norm}
    else:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    index.add_with_ids(embeddings, ids)
    return index, params


@dataclass
class ExactTruth:
    """Exact top-k of a query set, for measuring an index against it.

    Attributes:
        queries: ``[q, dim]`` float32.
        kth_scores: ``[q]`` the k-th best exact inner product of each query.
    """

    queries: np.ndarray
    kth_scores: np.ndarray


def exact_truth(embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> ExactTruth:
    """Exact search of ``queries`` (inner product) over all items."""
    index, _ = _make_index("flat", embeddings, ids, 0)
    scores, _ = index.search(queries, k)
    return ExactTruth(queries, scores[:, k - 1])


def recall_against(index: ItemIndex, truth: ExactTruth, embeddings: np.ndarray, rows: "pd.Index", k: int) -> float:
    """Mean share of the index's top-k whose exact score reaches the exact k-th best score.

    Counting by score rather than by id keeps the measure right when items tie (identical
    embeddings), where exact search's choice among them is arbitrary.

    Args:
        index: the index under test.
        truth: exact results of the queries.
        embeddings: ``[num_items, dim]`` float32 item embeddings.
        rows: index of raw item id -> embedding row.
        k: cut-off.
    """
    _, found = index.search(truth.queries, k)
    position = rows.get_indexer(found.reshape(-1)).reshape(found.shape)
    scores = np.einsum("qd,qkd->qk", truth.queries, embeddings[np.maximum(position, 0)])
    tolerance = 1e-5 * np.maximum(1.0, np.abs(truth.kth_scores))[:, None]
    hits = (scores >= truth.kth_scores[:, None] - tolerance) & (position >= 0)
    return float(hits.sum(axis=1).mean() / k)


def build_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    kind: str = "auto",
    k: int = 10,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> ItemIndex:
    """Build the index (``auto``: choose it by measurement) and tune its search parameter on real query vectors.

    Args:
        embeddings: ``[num_items, dim]`` float32 item embeddings.
        ids: ``[num_items]`` raw item ids: int64 (FAISS stores them), or strings (FAISS stores
            their positions, the index maps them back).
        queries: ``[q, dim]`` float32 user embeddings to measure recall on (as many item
            embeddings are drawn as a second query set).
        kind: ``auto`` or one of :data:`KINDS`.
        k: recall cut-off.
        target_recall: smallest acceptable recall@k against exact search.
        seed: seed of IVF training.

    Returns:
        The index (on the CPU) with its :class:`IndexInfo`; after ``auto``, ``info.candidates``
        holds every candidate's measured recall, latency and build time.
    """
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"index kind must be auto or one of {', '.join(KINDS)}, got {kind!r}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = raw_ids(ids)
    item_ids = None if ids.dtype == np.int64 else ids
    ids = ids if item_ids is None else np.arange(len(ids), dtype=np.int64)
    k = min(k, len(ids))
    item_queries = embeddings[np.random.default_rng(seed).permutation(len(ids))[: len(queries)]]
    truths = [exact_truth(embeddings, ids, q, k) for q in (queries, item_queries)]
    rows = pd.Index(ids)

    def tuned(kind: str) -> ItemIndex:
        raw, params = _make_index(kind, embeddings, ids, seed)
        info = IndexInfo(kind, len(ids), embeddings.shape[1], params, 1.0, k, len(queries), gpu_count() > 0)
        index = ItemIndex(raw, info, item_ids, *((embeddings, ids) if kind == "ivfpq" else ()))

        def measure() -> list:
            return [recall_against(index, truth, embeddings, rows, k) for truth in truths]

        knob = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(kind)
        if kind == "ivfpq":  # first the re-rank depth that the codes' error needs (every list probed)
            params["nprobe"] = params["nlist"]
            set_search_params(raw, params)
            while min(measure()) < target_recall and params["k_factor"] < MAX_REFINE_FACTOR:
                params["k_factor"] *= 2
                set_search_params(raw, params)
            params["nprobe"] = 1
            set_search_params(raw, params)
        recalls = measure()
        limit = params.get("nlist", 4096)
        while knob and min(recalls) < target_recall and params[knob] < limit:
            params[knob] = min(limit, params[knob] * 2)
            set_search_params(raw, params)
            recalls = measure()
        if knob and min(recalls) >= target_recall and params[knob] > 2:  # then halve the gap to the last miss
            low, high, passing = params[knob] // 2, params[knob], recalls
            while high - low > max(1, high // KNOB_PRECISION):
                params[knob] = (low + high) // 2
                set_search_params(raw, params)
                recalls = measure()
                if min(recalls) >= target_recall:
                    high, passing = params[knob], recalls
                else:
                    low = params[knob]
            params[knob], recalls = high, passing
            set_search_params(raw, params)
        index.info.recall_at_k, index.info.recall_at_k_item_queries = round(recalls[0], 4), round(recalls[1], 4)
        logger.info("index %s over %d items: recall@%d %s with %s", kind, len(ids), k, recalls, params)
        return index

    if kind != "auto":
        return tuned(kind)
    exact = best = None  # flat, and the approximate index chosen so far (any other is freed)
    candidates = []
    for candidate in candidate_kinds(len(ids)):
        started = time.perf_counter()
        index = tuned(candidate)
        candidates.append({"kind": candidate, "params": dict(index.info.params), "recall_at_k": index.info.recall_at_k,
                           "recall_at_k_item_queries": index.info.recall_at_k_item_queries,
                           "build_s": round(time.perf_counter() - started, 2),
                           "latency_ms": search_latency_ms(index, queries, k)})
        if candidate == "flat":
            exact = index
        elif choose(candidates, target_recall) == candidate:
            best = index
    chosen = exact if choose(candidates, target_recall) == "flat" else best
    chosen.info.candidates = candidates
    logger.info("index by measurement: %s of %s", chosen.info.kind, candidates)
    return chosen


def candidate_kinds(num_items: int) -> list:
    """The kinds auto measures for a catalog of ``num_items`` (:data:`CANDIDATES`)."""
    return [kind for kind, (low, high) in CANDIDATES.items() if low <= num_items and (high is None or num_items <= high)]


def choose(candidates: list, target_recall: float = TARGET_RECALL) -> str:
    """The kind to serve among measured candidates: the fastest approximate one whose recall on
    user and item queries reaches ``target_recall``, if it saves at least :data:`EXACT_MARGIN_MS`
    per query against exact search (``flat``, which must be among them); else ``flat``."""
    exact = next(c for c in candidates if c["kind"] == "flat")
    passing = [c for c in candidates if c["kind"] != "flat"
               and min(c["recall_at_k"], c["recall_at_k_item_queries"]) >= target_recall]
    fastest = min(passing, key=lambda c: c["latency_ms"], default=None)
    return fastest["kind"] if fastest and fastest["latency_ms"] <= exact["latency_ms"] - EXACT_MARGIN_MS else "flat"


def search_latency_ms(index: ItemIndex, queries: np.ndarray, k: int) -> float:
    """Median milliseconds of one single-query search on one thread (as the server runs it, one
    user per request, ``OMP_NUM_THREADS=1``), after a warm-up."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for query in queries[:20]:
            index.search(query[None], k)
        seconds = []
        for query in queries[:LATENCY_QUERIES]:
            started = time.perf_counter()
            index.search(query[None], k)
            seconds.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return round(float(np.median(seconds)) * 1e3, 4)


def save_index(index: ItemIndex, folder: str | Path) -> Path:
    """Write ``items.faiss`` (an IVF index's lists in ``items.ivfdata``; an IVF-PQ index's exact
    vectors in ``vectors.npy`` and ``row_ids.npy``), ``index.json`` and, for string ids,
    ``item_ids.parquet`` into ``folder``."""
    import faiss

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (IVF_DATA_FILE, VECTORS_FILE, ROW_IDS_FILE, ITEM_IDS_FILE):  # of an index saved here before
        (folder / stale).unlink(missing_ok=True)
    raw = index.index
    if index.info.kind == "ivf":  # its lists in their own file, which load_index memory-maps
        raw = faiss.clone_index(raw)
        ivf = faiss.downcast_index(raw.index)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / IVF_DATA_FILE))
        source = faiss.InvertedListsPtrVector()
        source.push_back(faiss.downcast_index(index.index.index).invlists)
        lists.merge_from(source.data(), source.size())
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # owned by the index now
    faiss.write_index(raw, str(folder / INDEX_FILE))
    if index.vectors is not None:
        np.save(folder / VECTORS_FILE, np.ascontiguousarray(index.vectors, dtype=np.float32))
        np.save(folder / ROW_IDS_FILE, index.row_ids)
    (folder / INFO_FILE).write_text(json.dumps(asdict(index.info), indent=2))
    if index.item_ids is not None:
        pd.DataFrame({C.ITEM_ID: index.item_ids}).to_parquet(folder / ITEM_IDS_FILE, index=False)
    return folder
