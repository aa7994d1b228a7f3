"""FAISS index over the item embeddings (inner product, the model's score), keyed by raw item id.

``auto`` keeps exact search for small catalogs and switches to IVF above
``EXACT_MAX_ITEMS``; the search-time parameter (``nprobe`` / ``efSearch``) is raised until
recall@k against exact search, measured on real user vectors, reaches the target.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 50_000
TARGET_RECALL = 0.95
INDEX_FILE = "items.faiss"
INFO_FILE = "index.json"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
IVF_TRAIN_POINTS_PER_LIST = 64


@dataclass
class IndexInfo:
    """What was built and how well it does.

    Attributes:
        kind: ``flat``, ``ivf`` or ``hnsw``.
        items: number of indexed items.
        dim: embedding size.
        params: structural and search parameters (``nlist``, ``nprobe``, ``M``, ``efSearch``).
        recall_at_k: mean recall@k against exact search over ``queries`` real user vectors.
        k: the k of that recall.
        queries: number of user vectors measured.
        gpu: whether faiss saw a GPU.
    """

    kind: str
    items: int
    dim: int
    params: dict = field(default_factory=dict)
    recall_at_k: float = 1.0
    k: int = 10
    queries: int = 0
    gpu: bool = False


def gpu_count() -> int:
    """GPUs visible to faiss (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def choose_kind(requested: str, num_items: int) -> str:
    """Resolve ``auto`` by catalog size; other kinds are returned as given."""
    if requested != "auto":
        return requested
    return "flat" if num_items <= EXACT_MAX_ITEMS else "ivf"


def ivf_lists(num_items: int) -> int:
    """Number of IVF lists: about 4 * sqrt(n), a power of two, at least 1 list per 39 items."""
    target = 4 * math.sqrt(num_items)
    nlist = 2 ** max(0, round(math.log2(target)))
    return int(max(1, min(nlist, num_items // 39)))


def _make_index(kind: str, embeddings: np.ndarray, ids: np.ndarray, seed: int):
    import faiss

    n, dim = embeddings.shape
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        params = {}
    elif kind == "ivf":
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        ivf.cp.seed = seed
        sample = np.random.default_rng(seed).permutation(n)[: nlist * IVF_TRAIN_POINTS_PER_LIST]
        ivf.train(embeddings[np.sort(sample)])
        index = faiss.IndexIDMap2(ivf)
        params = {"nlist": nlist, "nprobe": 1}
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(hnsw)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": 16}
    else:
        raise ValueError(f"index kind must be flat, ivf or hnsw, got {kind!r}")
    index.add_with_ids(embeddings, ids)
    return index, params


def set_search_params(index, params: dict) -> None:
    """Apply ``nprobe`` / ``efSearch`` to an index built by :func:`build_index`."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if "nprobe" in params:
        inner.nprobe = int(params["nprobe"])
    if "efSearch" in params:
        inner.hnsw.efSearch = int(params["efSearch"])


def exact_top_k(embeddings: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids, ``[len(queries), k]`` int64."""
    index, _ = _make_index("flat", embeddings, ids, 0)
    return index.search(queries, k)[1]


def recall_against(index, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over the queries."""
    found = index.search(queries, k)[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def build_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    kind: str = "auto",
    k: int = 10,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> tuple[object, IndexInfo]:
    """Build the index and tune its search parameter on real query vectors.

    Args:
        embeddings: ``[num_items, dim]`` float32 item embeddings.
        ids: ``[num_items]`` int64 raw item ids.
        queries: ``[q, dim]`` float32 user embeddings to measure recall on.
        kind: ``auto``, ``flat``, ``ivf`` or ``hnsw``.
        k: recall cut-off.
        target_recall: smallest acceptable recall@k against exact search.
        seed: seed of IVF training.

    Returns:
        The faiss index (CPU) and its :class:`IndexInfo`.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    kind = choose_kind(kind, len(ids))
    k = min(k, len(ids))
    index, params = _make_index(kind, embeddings, ids, seed)
    truth = exact_top_k(embeddings, ids, queries, k)
    knob = {"ivf": "nprobe", "hnsw": "efSearch"}.get(kind)
    recall = recall_against(index, queries, truth, k)
    if knob:
        limit = params["nlist"] if kind == "ivf" else 4096
        while recall < target_recall and params[knob] < limit:
            params[knob] = min(limit, params[knob] * 2)
            set_search_params(index, params)
            recall = recall_against(index, queries, truth, k)
    info = IndexInfo(kind, len(ids), embeddings.shape[1], params, round(recall, 4), k, len(queries), gpu_count() > 0)
    logger.info("index %s over %d items: recall@%d %.4f with %s", kind, len(ids), k, recall, params)
    return index, info


def save_index(index, info: IndexInfo, folder: str | Path) -> Path:
    """Write ``items.faiss`` and ``index.json`` into ``folder``."""
    import faiss

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    (folder / INFO_FILE).write_text(json.dumps(asdict(info), indent=2))
    return folder


def load_index(folder: str | Path, use_gpu: bool | None = None):
    """Read an index saved by :func:`save_index`, on the GPU when faiss sees one (flat, IVF).

    Returns:
        ``(index, IndexInfo)``.
    """
    import faiss

    folder = Path(folder)
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text()))
    index = faiss.read_index(str(folder / INDEX_FILE))
    set_search_params(index, info.params)
    use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
    if use_gpu and info.kind != "hnsw":  # faiss has no GPU HNSW
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index, info
