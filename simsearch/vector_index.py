"""The low-level search layer: FAISS inner-product indexes over L2-normalised vectors.

Always 2-D in, 2-D out:
``search(index, vectors (n, d) float32, k) -> (scores (n, k'), rows (n, k'))`` with
``k' = min(k, ntotal)``; rows are positions in the catalog, ``-1`` where an approximate index
found fewer than ``k'`` (the high-level layer drops those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import ConfigError, IndexCorruptError

INDEX_TYPES = ("flat", "hnsw", "ivf")
AUTO = "auto"  # the default: a type chosen by catalog size, see choose_type
SMALL_BATCH = 20  # below this many queries, search on one thread
# Up to here exact search of one 64-d query costs under ~0.5 ms on one core; beyond, HNSW
# answers in ~0.1 ms with recall@10 >= 0.998 (measured on 60,000 items, README "Performance").
FLAT_UP_TO = 20_000
# Beyond here building HNSW takes too long on a small machine; IVF trains on a sample and adds
# in one pass (README "Scale").
HNSW_UP_TO = 2_000_000


def choose_type(index_type: str, count: int) -> str:
    """``auto`` -> flat, hnsw or ivf by catalog size; an explicit type is checked and kept."""
    if index_type == AUTO:
        if count <= FLAT_UP_TO:
            return "flat"
        return "hnsw" if count <= HNSW_UP_TO else "ivf"
    if index_type not in INDEX_TYPES:
        raise ConfigError(
            f"unknown --index-type {index_type!r}; choose one of {AUTO}, {', '.join(INDEX_TYPES)}"
        )
    return index_type


def default_params(index_type: str, count: int) -> dict[str, Any]:
    """Sensible parameters by catalog size (after FAISS's 'Guidelines to choose an index')."""
    if index_type == "flat":
        return {}
    if index_type == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 64}
    if index_type == "ivf":
        nlist = int(max(1, min(65536, round(4 * np.sqrt(max(count, 1))))))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, 16)), "pq_m": 0}
    raise ConfigError(
        f"unknown --index-type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}"
    )


def build(
    vectors: np.ndarray, index_type: str = "flat", params: dict[str, Any] | None = None
) -> Any:
    """A FAISS index over ``vectors`` (n, d) float32 unit rows; row i gets id i."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    index: Any
    params = {**default_params(index_type, n), **(params or {})}
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["efConstruction"])
        index.hnsw.efSearch = int(params["efSearch"])
    elif index_type == "ivf":
        nlist = int(min(params["nlist"], max(1, n // 39)))  # FAISS wants >= 39 points per list
        quantizer = faiss.IndexFlatIP(d)
        if params.get("pq_m"):
            m = int(params["pq_m"])
            if d % m:
                raise ConfigError(f"pq_m={m} must divide the embedding dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = int(min(params["nprobe"], nlist))
    else:
        raise ConfigError(f"unknown --index-type {index_type!r}")
    index.add(vectors)
    return index


class Tombstones:
    """Positions of an HNSW index that no longer count (FAISS cannot delete from a graph).

    The graph keeps the removed nodes as stepping stones; searches skip them through a FAISS
    ``IDSelector``, so removal costs nothing and the graph is rebuilt only when many pile up.
    """

    def __init__(self, removed: np.ndarray, ntotal: int) -> None:
        self.count = int(removed.sum())
        self._bits = np.packbits(removed, bitorder="little")  # kept alive for the selector
        import faiss

        self._selector = faiss.IDSelectorNot(
            faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(self._bits))
        )

    def params(self, index: Any) -> Any:
        import faiss

        return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from stubs
            sel=self._selector, efSearch=index.hnsw.efSearch
        )


def search(
    index: Any, vectors: np.ndarray, k: int, tombstones: Tombstones | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: scores (n, k') float32, rows (n, k') int64; k' = min(k, live)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != index.d:
        raise ConfigError(f"query vectors have shape {vectors.shape}, expected (n, {index.d})")
    k = min(int(k), int(index.ntotal) - (tombstones.count if tombstones else 0))
    if k <= 0 or len(vectors) == 0:
        return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
    extra = {"params": tombstones.params(index)} if tombstones else {}
    if len(vectors) >= SMALL_BATCH:
        scores, rows = index.search(vectors, k, **extra)
        return scores, rows
    # One OpenMP thread for a handful of queries: forking a thread team costs more than the
    # search itself, and on a busy machine a spinning team can cost milliseconds.
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        scores, rows = index.search(vectors, k, **extra)
    finally:
        faiss.omp_set_num_threads(threads)
    return scores, rows


def save(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load(path: Path) -> Any:
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise IndexCorruptError(f"{path}: not a readable FAISS index ({first})") from None
