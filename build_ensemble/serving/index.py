"""FAISS search over the item embeddings, as the serving graph loads it (the build writes it:
``build_ensemble.index``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INDEX_FILE = "items.faiss"
IVF_DATA_FILE = "items.ivfdata"  # an IVF index's lists, memory-mapped read-only: shared by the server's processes
VECTORS_FILE = "vectors.npy"  # ivfpq: the exact item vectors its shortlist is re-ranked with (memory-mapped)
ROW_IDS_FILE = "row_ids.npy"  # ivfpq: the index id of each vector row (its codes are stored by row)
INFO_FILE = "index.json"
ITEM_IDS_FILE = "item_ids.parquet"  # string item ids by position (FAISS stores int64 ids)
POPULAR_FILE = "popular.parquet"  # the fallback: most popular items in training


@dataclass
class IndexInfo:
    """What was built and how well it does.

    Attributes:
        kind: ``flat``, ``ivf``, ``hnsw`` or ``ivfpq`` (IVF with 4-bit fast-scan PQ codes, the
            best ``k_factor * k`` re-ranked by exact inner products).
        items: number of indexed items.
        dim: embedding size.
        params: structural and search parameters (``nlist``, ``nprobe``, ``M``, ``efSearch``,
            ``k_factor``).
        recall_at_k: mean recall@k against exact search over ``queries`` real user vectors.
        k: the k of that recall.
        queries: number of user vectors measured.
        gpu: whether faiss saw a GPU.
        recall_at_k_item_queries: the same with item vectors as queries. User vectors of a
            weak model can all point one way, which makes any index look exact; item vectors
            spread over the whole catalog, so the search parameter must satisfy both.
        candidates: when the kind was chosen by measurement (``auto``), each candidate's
            ``kind``, ``params``, recalls, ``latency_ms`` (median single-query search) and ``build_s``.
    """

    kind: str
    items: int
    dim: int
    params: dict = field(default_factory=dict)
    recall_at_k: float = 1.0
    k: int = 10
    queries: int = 0
    gpu: bool = False
    recall_at_k_item_queries: float | None = None
    candidates: list = field(default_factory=list)


def gpu_count() -> int:
    """GPUs visible to faiss (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class ItemIndex:
    """A faiss index over item embeddings, searched by inner product.

    IVF partitions and HNSW graphs built on inner products serve maximum-inner-product search
    poorly (measured: IVF recall@10 of 0.10 at nprobe 128 on item-vector queries over 1M
    items). So ``ivf``, ``hnsw`` and ``ivfpq`` store the items with one extra coordinate
    ``sqrt(max_norm^2 - |x|^2)`` and search by L2: the nearest item of ``[q, 0]`` is the one
    with the largest ``q . x`` (0.99 at nprobe 128 on the same data), and the score is
    recovered exactly from the distance (``ivfpq`` pads with zeros to an even width, and its
    re-rank computes exact distances).

    FAISS stores int64 ids: a catalog with integer ids stores them as they are; one with string
    ids stores their positions, and :meth:`to_raw` maps positions back to the strings.

    ``ivfpq`` keeps only 4-bit codes in the faiss index, stored by row, and re-ranks its
    shortlist with the exact vectors (``vectors``, memory-mapped when loaded, so the
    instances of a model share them); ``row_ids`` gives each row's index id.

    Args:
        index: the faiss index.
        info: how it was built, with its search parameters.
        item_ids: ``[num_items]`` string item ids by position, or None for integer ids.
        vectors: ``ivfpq``: ``[num_items, dim]`` float32 item vectors by row.
        row_ids: ``ivfpq``: ``[num_items]`` int64 index id of each row.
    """

    def __init__(self, index, info: IndexInfo, item_ids: np.ndarray | None = None,
                 vectors: np.ndarray | None = None, row_ids: np.ndarray | None = None):
        self.index = index
        self.info = info
        self.item_ids = item_ids
        self.vectors, self.row_ids = vectors, row_ids
        self._positions = None if item_ids is None else {item: n for n, item in enumerate(item_ids.tolist())}

    def to_raw(self, ids: np.ndarray) -> np.ndarray:
        """Index ids (as :meth:`search` returns them) as raw item ids."""
        return ids if self.item_ids is None else self.item_ids[ids]

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Raw item ids as index ids."""
        if self.item_ids is None:
            return np.asarray(raw, dtype=np.int64)
        return np.array([self._positions[item] for item in raw], dtype=np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items of each query.

        Args:
            queries: ``[n, dim]`` float32.
            k: items per query.

        Returns:
            ``([n, k] float32 inner products, [n, k] int64 index ids)``; id -1 marks an empty slot.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        max_norm = self.info.params.get("max_norm")
        if max_norm is None:
            return self.index.search(queries, k)
        augmented = np.hstack([queries, np.zeros((len(queries), self.index.d - queries.shape[1]), dtype=np.float32)])
        if self.vectors is not None:
            return self._rerank(queries, self.index.search(augmented, k * int(self.info.params["k_factor"]))[1], k)
        distances, ids = self.index.search(augmented, k)
        scores = ((queries * queries).sum(axis=1, keepdims=True) + max_norm**2 - distances) / 2
        return scores.astype(np.float32), ids

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of each query's shortlist ``rows`` (-1: empty) by exact inner product."""
        exact = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, len(rows), 16):  # bounded memory: [16, shortlist, dim] at a time
            block = slice(start, start + 16)
            exact[block] = np.einsum("qd,qkd->qk", queries[block], self.vectors[np.maximum(rows[block], 0)])
        exact[rows < 0] = -np.inf
        if rows.shape[1] > k:  # the best k of the shortlist, unordered, then only they are sorted
            best = np.argpartition(-exact, k - 1, axis=1)[:, :k]
            exact, rows = np.take_along_axis(exact, best, axis=1), np.take_along_axis(rows, best, axis=1)
        order = np.argsort(-exact, axis=1, kind="stable")
        scores, rows = np.take_along_axis(exact, order, axis=1), np.take_along_axis(rows, order, axis=1)
        ids = np.where(rows >= 0, self.row_ids[np.maximum(rows, 0)], -1)
        return np.where(rows >= 0, scores, 0).astype(np.float32), ids


def set_search_params(index, params: dict) -> None:
    """Apply ``nprobe`` / ``efSearch`` to an index built by :func:`build_index` (``k_factor`` is
    read by :meth:`ItemIndex.search`)."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else faiss.downcast_index(index)
    if "nprobe" in params:
        inner.nprobe = int(params["nprobe"])
    if "efSearch" in params:
        inner.hnsw.efSearch = int(params["efSearch"])


def load_index(folder: str | Path, use_gpu: bool | None = None) -> ItemIndex:
    """Read an index saved by :func:`save_index`, on the GPU when faiss sees one (flat, IVF).

    An IVF index's lists and an IVF-PQ index's exact vectors stay in their files,
    memory-mapped read-only: the instances of a model (one process each) share one copy in
    the page cache instead of holding one each. Every page is touched once here, so the
    process's RSS counts them from the start (its PSS counts each shared page once).
    """
    import faiss

    folder = Path(folder)
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text()))
    if info.kind == "ivf" and (folder / IVF_DATA_FILE).exists():  # lists beside the index file, wherever it was moved
        raw = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        ivf = faiss.downcast_index(raw.index)
        # faiss's prefetch threads start per search: 3.4 ms instead of 0.13 ms per query (measured)
        faiss.downcast_InvertedLists(ivf.invlists).prefetch_nthread = 0
        # Map every page now (one search probing all lists): served, the first touches cost
        # page faults, 0.78 ms a query instead of 0.26 ms at 1M items (measured)
        ivf.nprobe = ivf.nlist
        raw.search(np.zeros((1, raw.d), dtype=np.float32), 1)
    else:
        raw = faiss.read_index(str(folder / INDEX_FILE))
    set_search_params(raw, info.params)
    use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
    if use_gpu and info.kind in ("flat", "ivf"):  # faiss has no GPU HNSW nor fast-scan PQ
        raw = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, raw)
    vectors = row_ids = None
    if info.kind == "ivfpq":
        vectors, row_ids = np.load(folder / VECTORS_FILE, mmap_mode="r"), np.load(folder / ROW_IDS_FILE)
        vectors.sum(dtype=np.float64)  # map every page now, as for IVF's lists
    item_ids = None
    if (folder / ITEM_IDS_FILE).exists():
        import pandas as pd

        item_ids = pd.read_parquet(folder / ITEM_IDS_FILE).iloc[:, 0].to_numpy(dtype=object)
    return ItemIndex(raw, info, item_ids, vectors, row_ids)
