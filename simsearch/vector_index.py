"""The low-level search layer: FAISS inner-product indexes over L2-normalised vectors.

Always 2-D in, 2-D out:
``search(index, vectors (n, d) float32, k) -> (scores (n, k'), rows (n, k'))`` with
``k' = min(k, ntotal)``; rows are positions in the catalog, ``-1`` where an approximate index
found fewer than ``k'`` (the high-level layer drops those).

:class:`VectorIndex` wraps one FAISS index with the map from its positions to catalog rows and
never changes once built: :meth:`VectorIndex.added` and :meth:`VectorIndex.removed` return a new
one (copy on write), so searches running in other threads always see a complete index.
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
# answers in ~0.1 ms with recall@10 >= 0.998 (see scripts/README.md).
FLAT_UP_TO = 20_000
# Beyond here building HNSW takes too long on a small machine; IVF trains on a sample and adds
# in one pass (see scripts/README.md, "Scale").
HNSW_UP_TO = 2_000_000
# HNSW: removed items kept as tombstones up to this share of the graph, then it is rebuilt.
MAX_TOMBSTONE_FRACTION = 0.1


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
        if n == 0:
            raise ConfigError("an IVF index needs vectors to train its lists on")
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


class VectorIndex:
    """One FAISS index of a given type over the catalog rows, never changed once made.

    ``rows`` maps FAISS positions to catalog rows (-1: a removed item an HNSW graph still holds);
    ``None`` means position == row.
    """

    def __init__(
        self, index: Any, kind: str, params: dict[str, Any], rows: np.ndarray | None = None
    ) -> None:
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.rows = rows
        self._tombstones = (
            Tombstones(rows < 0, len(rows)) if rows is not None and (rows < 0).any() else None
        )

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str, params: dict[str, Any]) -> VectorIndex:
        return cls(build(vectors, kind, params), kind, params)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def tombstones(self) -> int:
        return self._tombstones.count if self._tombstones else 0

    def check(self, count: int, dim: int) -> None:
        """IndexCorruptError unless this index holds exactly ``count`` live ``dim``-d rows."""
        positions = count if self.rows is None else len(self.rows)
        if self.ntotal != positions or self.d != dim:
            raise IndexCorruptError(
                f"FAISS index holds {self.ntotal} x {self.d}, expected {positions} x {dim}"
            )
        if self.rows is not None and not np.array_equal(
            np.sort(self.rows[self.rows >= 0]), np.arange(count)
        ):
            raise IndexCorruptError("faiss_rows.npy does not map the index onto its items")

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) unit vectors -> scores (n, k'), catalog rows (n, k'); -1 rows = no result."""
        scores, positions = search(self.index, vectors, k, self._tombstones)
        if self.rows is None:
            return scores, positions
        return scores, np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)

    def added(self, vectors: np.ndarray) -> VectorIndex:
        """A new index with ``vectors`` appended as the next catalog rows."""
        import faiss

        clone = faiss.clone_index(self.index)
        clone.add(np.ascontiguousarray(vectors, dtype=np.float32))
        rows = self.rows
        if rows is not None:  # new FAISS positions follow the old ones
            live = int(np.count_nonzero(rows >= 0))
            rows = np.concatenate([rows, np.arange(live, live + len(vectors), dtype=np.int64)])
        return VectorIndex(clone, self.kind, self.params, rows)

    def removed(self, keep: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """A new index over the rows where ``keep`` is True; ``vectors`` are those rows' vectors.

        Flat indexes are rebuilt, IVF refilled on its trained quantizer; HNSW keeps removed items
        as tombstones that searches skip until they pass MAX_TOMBSTONE_FRACTION of the graph.
        """
        new_row = np.cumsum(keep) - 1  # old row -> new row (-1 once removed)
        new_row[~keep] = -1
        if self.kind == "hnsw" and len(vectors):
            positions = self.rows if self.rows is not None else np.arange(len(keep))
            mapped = np.where(positions >= 0, new_row[np.maximum(positions, 0)], -1)
            tombstones = int(np.count_nonzero(mapped < 0))
            if tombstones <= MAX_TOMBSTONE_FRACTION * len(mapped):
                rows = mapped.astype(np.int64) if tombstones else None
                return VectorIndex(self.index, self.kind, self.params, rows)
        if self.kind == "ivf":
            import faiss

            clone = faiss.clone_index(self.index)
            clone.reset()  # keeps the trained coarse quantizer
            if len(vectors):
                clone.add(np.ascontiguousarray(vectors, dtype=np.float32))
            return VectorIndex(clone, self.kind, self.params)
        return VectorIndex.build(vectors, self.kind, self.params)
