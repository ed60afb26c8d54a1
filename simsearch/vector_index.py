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

import functools
import itertools
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from simsearch.errors import ConfigError, IndexCorruptError

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivf-fastscan")
# IVF lists of 4-bit product-quantizer codes that FAISS scans with SIMD ("fast scan", codes of
# residuals to the list centroid), the best ``refine`` x k candidates re-ranked by exact inner
# product with the catalog vectors simsearch holds anyway: about 25 bytes per vector in the FAISS
# index instead of 256 (flat, IVF-Flat) or 530 (HNSW), and no graph to build.
FASTSCAN = "ivf-fastscan"
IVF_TYPES = ("ivf", FASTSCAN)  # trained coarse quantizer: refilled on remove, shared by shards
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
MAX_EF_SEARCH = 1 << 16
TRAIN_PER_LIST = 256  # FAISS's k-means uses at most this many points per centroid


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
    if index_type == FASTSCAN:
        # Fewer, longer lists than IVF-Flat: scanning codes is cheap, the coarse step is not.
        # The 4-bit codes, not nprobe, cap recall: re-ranking 32 x k candidates brings recall@10
        # to 0.96 on a million vectors (scripts/README.md, "Scale").
        nlist = int(max(1, min(65536, round(np.sqrt(max(count, 1))))))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, 8)), "pq_m": 0, "refine": 32}
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
    elif index_type == FASTSCAN:
        if n == 0:
            raise ConfigError("an IVF index needs vectors to train its lists on")
        nlist = int(min(params["nlist"], max(1, n // 39)))
        m = int(params.get("pq_m") or d // 2)  # 2 dimensions per 4-bit sub-quantizer
        if m < 1 or d % m:
            raise ConfigError(f"pq_m={m} must divide the embedding dimension {d}")
        index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x4fsr", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = int(min(params["nprobe"], nlist))
    else:
        raise ConfigError(f"unknown --index-type {index_type!r}")
    index.add(vectors)
    return index


def search(
    index: Any,
    vectors: np.ndarray,
    k: int,
    params: Any = None,
    coarse: Any = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: scores (n, k') float32, positions (n, k') int64 (-1: none);
    k' = min(k, ntotal). ``params``: FAISS SearchParameters (a selector, efSearch, nprobe).
    ``coarse``: for an IVF index, the lists to visit as its quantizer's (scores, lists) for
    these vectors, (n, nprobe) each, already computed (shards sharing one quantizer).

    ``threads``: at most this many OpenMP threads for this call (None: FAISS's setting for
    the calling thread); fewer than SMALL_BATCH queries run on one.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != index.d:
        raise ConfigError(f"query vectors have shape {vectors.shape}, expected (n, {index.d})")
    k = min(int(k), int(index.ntotal))
    if k <= 0 or len(vectors) == 0:
        return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
    return _on_threads(threads, len(vectors), _search, index, vectors, k, params, coarse)


def _search(
    index: Any, vectors: np.ndarray, k: int, params: Any, coarse: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The C++ search of checked (n, d) contiguous float32 ``vectors``, 0 < k <= ntotal."""
    import faiss

    n = len(vectors)
    scores = np.empty((n, k), np.float32)
    rows = np.empty((n, k), np.int64)
    if coarse is None:
        # FAISS's Python ``index.search`` would check and convert the arguments again (a few
        # microseconds, a sizeable share of a one-query search).
        index.search_c(
            n, faiss.swig_ptr(vectors), k, faiss.swig_ptr(scores), faiss.swig_ptr(rows), params
        )
        return scores, rows
    # The C++ call: FAISS's Python wrapper of search_preassigned takes no SearchParameters.
    centroid_scores = np.ascontiguousarray(coarse[0], dtype=np.float32)
    lists = np.ascontiguousarray(coarse[1], dtype=np.int64)
    if lists.shape != (n, index.nprobe) or centroid_scores.shape != lists.shape:
        raise ConfigError(f"coarse assignment of shape {lists.shape} for nprobe {index.nprobe}")
    index.search_preassigned_c(
        n,
        faiss.swig_ptr(vectors),
        k,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(centroid_scores),
        faiss.swig_ptr(scores),
        faiss.swig_ptr(rows),
        False,
        params,
    )
    return scores, rows


def rerank(
    queries: np.ndarray,
    catalog: np.ndarray,
    candidates: np.ndarray,
    k: int,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's ``candidates`` (n, c) rows of ``catalog`` by exact inner
    product: scores (n, k) float32 best first, rows (n, k) int64 (-1 after a query's last
    candidate). ``queries`` (n, d) and ``catalog`` (rows, d) float32; ``threads`` as in
    :func:`search`."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    catalog = np.ascontiguousarray(catalog, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    n, c = candidates.shape
    scores = np.empty((n, k), np.float32)
    rows = np.empty((n, k), np.int64)
    _on_threads(
        threads,
        n,
        faiss.knn_inner_products_by_idx,  # type: ignore[attr-defined]  # not in the stubs
        faiss.swig_ptr(queries),
        faiss.swig_ptr(catalog),
        faiss.swig_ptr(candidates),
        catalog.shape[1],
        n,
        len(catalog),
        c,
        k,
        faiss.swig_ptr(scores),
        faiss.swig_ptr(rows),
        c,  # the stride between queries' candidate lists
    )
    return scores, rows


def refine_of(kind: str, params: dict[str, Any]) -> int:
    """How many times k candidates an index's search re-ranks exactly (1: none)."""
    return max(1, int(params.get("refine") or 1)) if kind == FASTSCAN else 1


def _on_threads(threads: int | None, n: int, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` with at most ``threads`` OpenMP threads (None: FAISS's setting for the
    calling thread, which is per thread and restored after); fewer than SMALL_BATCH queries on
    one: starting a thread team costs more than such a search (on a busy machine, ms)."""
    wanted = 1 if n < SMALL_BATCH else threads
    if wanted is None:
        return call(*args)
    import faiss

    before = faiss.omp_get_max_threads()
    if before == wanted:
        return call(*args)
    faiss.omp_set_num_threads(wanted)
    try:
        return call(*args)
    finally:
        faiss.omp_set_num_threads(before)


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

    ``rows`` maps FAISS positions to catalog rows (-1: a removed item an HNSW graph still holds,
    skipped by every search); ``None`` means position == row.

    ``unreachable`` (HNSW): positions the graph walk does not reach from its entry point, even
    from their own vector (a few outliers in a large graph). Every search also scores them
    exactly, so each catalog item can always be found, by its own image first of all.
    """

    def __init__(
        self,
        index: Any,
        kind: str,
        params: dict[str, Any],
        rows: np.ndarray | None = None,
        unreachable: np.ndarray | None = None,
    ) -> None:
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.rows = rows
        live = np.ones(0, bool) if rows is None else np.asarray(rows) >= 0
        self.tombstones = len(live) - int(np.count_nonzero(live))
        # Positions that may be returned (all but tombstones), as a FAISS selector bitmap.
        self._live = _Selection(live) if self.tombstones else None
        self.unreachable = (
            None if unreachable is None or not len(unreachable) else np.sort(unreachable)
        )
        self._unreachable_vectors = (
            None
            if self.unreachable is None
            else np.stack([index.reconstruct(int(p)) for p in self.unreachable])
        )
        # Read once for every search (FAISS's attributes cost a microsecond or so each).
        self._d = int(index.d)
        self._ntotal = int(index.ntotal)
        self._count = self._ntotal - self.tombstones
        self._refine = refine_of(kind, self.params)
        self._hnsw = index.hnsw if kind == "hnsw" else None  # efSearch read at each search

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str, params: dict[str, Any]) -> VectorIndex:
        index = build(vectors, kind, params)
        return cls(index, kind, params, unreachable=find_unreachable(index, kind, vectors, 0))

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def count(self) -> int:
        """Catalog rows held (FAISS positions minus tombstones)."""
        return self.ntotal - self.tombstones

    def unavailable(self) -> dict[str, str]:
        """Parts that cannot answer now: none, the index is in this process."""
        return {}

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

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        coarse: Any = None,
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) unit vectors -> scores (n, k'), catalog rows (n, k'); -1 rows: no result.

        ``allowed``: a bool mask over the catalog rows; only those are returned (a FAISS
        selector inside the search, so the k returned are the best allowed ones). An HNSW search
        looks at no fewer than k candidates (efSearch >= k). Approximate indexes may still
        return fewer than k'; the caller completes those rows (see SearchIndex).
        ``coarse``: IVF lists already chosen for ``vectors`` (see :func:`search`). ``threads``:
        as in :func:`search`. ``catalog``: the (count, d) vectors of the catalog rows; an
        ``ivf-fastscan`` index re-ranks its ``refine`` x k best candidates with them (without,
        its scores are the quantized codes' approximations).
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._d:
            raise ConfigError(f"query vectors have shape {vectors.shape}, expected (n, {self._d})")
        selection = self._live
        live = self._count
        if allowed is not None:
            positions_allowed = (
                allowed
                if self.rows is None
                else ((self.rows >= 0) & allowed[np.maximum(self.rows, 0)])
            )
            selection = _Selection(positions_allowed)
            live = selection.count
        k = min(int(k), live)
        n = len(vectors)
        if k <= 0 or n == 0:
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        params = self._search_params(k, selection)
        if self._refine > 1 and catalog is not None and self.rows is None:
            wide = min(k * self._refine, self._ntotal)
            _, candidates = _on_threads(
                threads, n, _search, self.index, vectors, wide, params, coarse
            )
            return rerank(vectors, catalog, candidates, k, threads)
        scores, positions = _on_threads(threads, n, _search, self.index, vectors, k, params, coarse)
        if self.unreachable is not None:
            scores, positions = self._with_unreachable(vectors, k, scores, positions, selection)
        if self.rows is None:
            return scores, positions
        return scores, np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)

    def _with_unreachable(
        self,
        vectors: np.ndarray,
        k: int,
        scores: np.ndarray,
        positions: np.ndarray,
        selection: _Selection | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge the exactly scored unreachable positions into a graph search's top k."""
        assert self.unreachable is not None and self._unreachable_vectors is not None
        lost, lost_vectors = self.unreachable, self._unreachable_vectors
        if selection is not None:
            keep = selection.contains(lost)
            if not keep.any():
                return scores, positions
            lost, lost_vectors = lost[keep], lost_vectors[keep]
        extra = vectors @ lost_vectors.T
        below = np.count_nonzero(extra < scores[:, -1:])  # (count_nonzero: cheaper than all)
        if scores.shape[1] >= k and below == extra.size:
            return scores, positions  # (the usual case) none of them enters any top k
        extra_positions = np.broadcast_to(lost, extra.shape)
        found = np.isin(positions, lost)  # already found by the walk
        scores = np.where(found, -np.inf, scores).astype(np.float32)
        return merge_top_k([(scores, np.where(found, -1, positions)), (extra, extra_positions)], k)

    def _search_params(self, k: int, selection: _Selection | None) -> Any:
        if selection is None and (self._hnsw is None or k <= self._hnsw.efSearch):
            return None  # the index's own settings: no parameters to make per call
        import faiss

        params: Any
        if self._hnsw is not None:
            ef = max(int(self._hnsw.efSearch), k)
            if selection is not None and selection.count < self.ntotal:
                # A filter keeps a share of what the graph walk meets: look at more candidates.
                ef = max(ef, int(k * self.ntotal / max(selection.count, 1)))
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in the stubs
            params.efSearch = min(ef, MAX_EF_SEARCH)
        elif self.kind in IVF_TYPES:
            params = faiss.SearchParametersIVF()
            params.nprobe = int(self.index.nprobe)
        else:
            params = faiss.SearchParameters()
        if selection is not None:
            params.sel = selection.selector
        return params

    def added(self, vectors: np.ndarray) -> VectorIndex:
        """A new index with ``vectors`` appended as the next catalog rows."""
        import faiss

        clone = faiss.clone_index(self.index)
        start = clone.ntotal
        clone.add(np.ascontiguousarray(vectors, dtype=np.float32))
        rows = self.rows
        if rows is not None:  # new FAISS positions follow the old ones
            live = int(np.count_nonzero(rows >= 0))
            rows = np.concatenate([rows, np.arange(live, live + len(vectors), dtype=np.int64)])
        new = find_unreachable(clone, self.kind, vectors, start)
        old = self.unreachable if self.unreachable is not None else np.zeros(0, np.int64)
        return VectorIndex(clone, self.kind, self.params, rows, np.concatenate([old, new]))

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
                return VectorIndex(self.index, self.kind, self.params, rows, self.unreachable)
        if self.kind in IVF_TYPES:
            import faiss

            clone = faiss.clone_index(self.index)
            clone.reset()  # keeps the trained coarse quantizer (and product quantizer)
            if len(vectors):
                clone.add(np.ascontiguousarray(vectors, dtype=np.float32))
            return VectorIndex(clone, self.kind, self.params)
        return VectorIndex.build(vectors, self.kind, self.params)


def find_unreachable(index: Any, kind: str, vectors: np.ndarray, start: int) -> np.ndarray:
    """Positions (from ``start``, of ``vectors``) that an HNSW search for their own vector does
    not return: nodes the graph walk cannot reach. Empty for other index types."""
    if kind != "hnsw" or not len(vectors):
        return np.zeros(0, np.int64)
    scores, found = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    itself = found[:, 0] == np.arange(start, start + len(vectors))
    # A duplicate of the item (same vector) is as good as the item itself.
    lost = ~itself & (scores[:, 0] < 1.0 - 1e-5)
    return (np.flatnonzero(lost) + start).astype(np.int64)


class _Selection:
    """A set of FAISS positions as an ``IDSelectorBitmap`` (the bitmap kept alive with it)."""

    def __init__(self, mask: np.ndarray) -> None:
        import faiss

        self.mask = mask
        self.count = int(np.count_nonzero(mask))
        self._bits = np.packbits(mask, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bits))

    def contains(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.mask[positions], dtype=bool)


class ShardedIndex:
    """Several :class:`VectorIndex` shards over consecutive ranges of catalog rows.

    A search fans out over the shards and merges their top-k (best first, ties by row), so a
    sharded flat index returns exactly what one flat index returns, and IVF shards that share
    one trained quantizer return what the unsharded IVF returns. Items added go to the last
    shard. Like :class:`VectorIndex`, never changed once made.
    """

    def __init__(self, shards: list[VectorIndex]) -> None:
        if not shards:
            raise ConfigError("a sharded index needs at least one shard")
        self.shards = shards
        self.kind = shards[0].kind
        self.params = shards[0].params
        self.starts = np.concatenate([[0], np.cumsum([s.count for s in shards])]).astype(int)
        # IVF shards filled from one trained index share its quantizer: a search then finds
        # the lists to visit once, not once per shard (FAISS's IndexShardsIVF does the same).
        self.quantizer = _shared_quantizer(shards) if self.kind == "ivf" else None

    @property
    def d(self) -> int:
        return self.shards[0].d

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    @property
    def count(self) -> int:
        return int(self.starts[-1])

    @property
    def tombstones(self) -> int:
        return sum(s.tombstones for s in self.shards)

    @property
    def sizes(self) -> list[int]:
        return [s.count for s in self.shards]

    def check(self, count: int, dim: int) -> None:
        if self.count != count:
            raise IndexCorruptError(f"the shards hold {self.count} items, expected {count}")
        for shard in self.shards:
            shard.check(shard.count, dim)

    def unavailable(self) -> dict[str, str]:
        return {}

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        coarse = None
        if self.quantizer is not None:
            nprobe = int(self.shards[0].index.nprobe)
            coarse = search(self.quantizer, vectors, nprobe, threads=threads)
        allowed_parts = split_allowed(allowed, self.starts)
        parts = []
        for i, (shard, part) in enumerate(zip(self.shards, allowed_parts, strict=True)):
            rows = slice(self.starts[i], self.starts[i + 1])
            shard_catalog = None if catalog is None else catalog[rows]
            parts.append(shard.search(vectors, k, part, coarse, threads, shard_catalog))
        return merge_shards(parts, self.starts, k)

    def added(self, vectors: np.ndarray) -> ShardedIndex:
        return ShardedIndex([*self.shards[:-1], self.shards[-1].added(vectors)])

    def removed(self, keep: np.ndarray, vectors: np.ndarray) -> ShardedIndex:
        shards, taken = [], 0
        for shard, start, end in zip(self.shards, self.starts[:-1], self.starts[1:], strict=True):
            part = keep[start:end]
            n = int(np.count_nonzero(part))
            shards.append(shard.removed(part, vectors[taken : taken + n]))
            taken += n
        return ShardedIndex(shards)


def split_allowed(allowed: np.ndarray | None, starts: np.ndarray) -> list[np.ndarray | None]:
    """A bool mask over all catalog rows -> one mask per shard (``starts``: each shard's first
    row, then the total); None (no filter) for every shard when ``allowed`` is None."""
    if allowed is None:
        return [None] * (len(starts) - 1)
    return [allowed[start:end] for start, end in itertools.pairwise(starts)]


def merge_shards(
    parts: list[tuple[np.ndarray, np.ndarray]], starts: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each shard's (scores, rows within the shard) for the same queries -> the overall top k
    over catalog rows (shard i's row r is catalog row ``starts[i] + r``)."""
    shifted = [
        (scores, np.where(rows >= 0, rows + start, -1))
        for (scores, rows), start in zip(parts, starts[:-1], strict=True)
    ]
    return merge_top_k(shifted, k)


def _shared_quantizer(shards: list[VectorIndex]) -> Any:
    """The coarse quantizer every IVF shard has (same centroids, same nprobe), else None."""
    first = shards[0].index
    try:
        quantizer = first.quantizer
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        for shard in shards[1:]:
            other = shard.index.quantizer
            if shard.index.nprobe != first.nprobe or other.ntotal != quantizer.ntotal:
                return None
            if not np.array_equal(other.reconstruct_n(0, other.ntotal), centroids):
                return None
    except (AttributeError, RuntimeError):  # not an IVF index after all
        return None
    return quantizer


def merge_top_k(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-shard (scores, rows) of the same queries -> the overall top k (best first, ties by
    row, -1 rows last)."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    rows = np.concatenate([p[1] for p in parts], axis=1)
    k = min(k, scores.shape[1])
    key = np.where(rows >= 0, -scores.astype(np.float64), np.inf)
    order = np.lexsort((rows, key), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def build_shards(
    vectors: np.ndarray,
    kind: str,
    params: dict[str, Any],
    sizes: list[int],
    parallel: Callable[[list[np.ndarray], Any], list[Any]] | None = None,
) -> ShardedIndex:
    """Shards over consecutive slices of ``vectors`` of the given sizes. IVF shards share one
    coarse quantizer, trained once on a sample of all the vectors (train once, add in parts).

    ``parallel(parts, empty)`` builds the parts' FAISS indexes elsewhere (a Ray cluster: see
    ``simsearch.distributed.build_shards``), given the slices and the trained empty IVF index
    (None for other types); by default they are built here, one after the other.
    """
    if sum(sizes) != len(vectors):
        raise ConfigError(f"shard sizes add up to {sum(sizes)}, not {len(vectors)}")
    empty = None
    if kind in IVF_TYPES:
        empty = trained_empty(training_sample(vectors, params), kind, params)
    parts = np.split(np.ascontiguousarray(vectors, dtype=np.float32), np.cumsum(sizes)[:-1])
    if parallel is not None:
        indexes = parallel(parts, empty)
    elif empty is not None:
        indexes = [filled(empty, part) for part in parts]
    else:
        indexes = [build(part, kind, params) for part in parts]
    return ShardedIndex([VectorIndex(index, kind, params) for index in indexes])


def trained_empty(sample: np.ndarray, kind: str, params: dict[str, Any]) -> Any:
    """An IVF index trained on ``sample`` and holding nothing yet (to copy for each shard)."""
    index = build(sample, kind, params)
    index.reset()
    return index


def filled(empty: Any, vectors: np.ndarray) -> Any:
    """A copy of an empty (trained) index with ``vectors`` added."""
    import faiss

    index = faiss.clone_index(empty)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def training_sample(vectors: np.ndarray, params: dict[str, Any], seed: int = 0) -> np.ndarray:
    """The vectors an IVF quantizer is trained on: all of them up to TRAIN_PER_LIST per list,
    else a seeded random sample of that many (FAISS's k-means would subsample to it anyway), so
    training costs the same whatever the catalog size and is done once for all shards."""
    size = TRAIN_PER_LIST * int(params.get("nlist", 1))
    if len(vectors) <= size:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))
    return np.ascontiguousarray(vectors[rows])


def shard_sizes(count: int, shards: int) -> list[int]:
    """``count`` items in ``shards`` consecutive parts, as even as possible."""
    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    base, extra = divmod(count, shards)
    return [base + (i < extra) for i in range(shards)]


class Searcher(Protocol):
    """The FAISS part of a SearchIndex: a :class:`VectorIndex`, a :class:`ShardedIndex`, or
    shards searched in other processes (``simsearch.ray_serve``). Never changed once made."""

    kind: str
    params: dict[str, Any]

    @property
    def d(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def count(self) -> int: ...

    @property
    def tombstones(self) -> int: ...

    def check(self, count: int, dim: int) -> None:
        """IndexCorruptError unless it holds ``count`` live ``dim``-d rows."""

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) unit vectors -> scores (n, k'), catalog rows (n, k'), as VectorIndex.search."""
        ...

    def added(self, vectors: np.ndarray) -> Searcher: ...

    def removed(self, keep: np.ndarray, vectors: np.ndarray) -> Searcher: ...

    def unavailable(self) -> dict[str, str]:
        """Parts that cannot answer now, by name ("shard 2"), with the reason in one line."""
        ...


INDEX_FILE = re.compile(r"(index|faiss_rows|hnsw_unreachable)(-\d{3,4})?\.(faiss|npy)")


def is_index_file(name: str) -> bool:
    """A file of the index's FAISS part (one index, or its shards)."""
    return bool(INDEX_FILE.fullmatch(name))


def describe(searcher: Searcher) -> dict[str, Any]:
    """The manifest's ``index`` section for ``searcher``."""
    conf: dict[str, Any] = {"type": searcher.kind, "params": dict(searcher.params)}
    if isinstance(searcher, ShardedIndex):
        conf["shards"] = searcher.sizes
    if searcher.tombstones:
        conf["tombstones"] = searcher.tombstones
    return conf


def file_writers(searcher: Searcher) -> dict[str, Callable[[Path], None]]:
    """File name -> writer, for every file of ``searcher`` (ConfigError for shards that live
    in other processes: only their own files hold them)."""
    if not isinstance(searcher, VectorIndex | ShardedIndex):
        raise ConfigError("an index whose shards are served elsewhere cannot be saved from here")
    parts = searcher.shards if isinstance(searcher, ShardedIndex) else [searcher]
    suffix = (
        [f"-{i:03d}" for i in range(len(parts))] if isinstance(searcher, ShardedIndex) else [""]
    )
    writers: dict[str, Callable[[Path], None]] = {}
    for part, tail in zip(parts, suffix, strict=True):
        writers[f"index{tail}.faiss"] = functools.partial(save, part.index)
        if part.rows is not None:
            writers[f"faiss_rows{tail}.npy"] = functools.partial(_save_rows, part.rows)
        if part.unreachable is not None:
            writers[f"hnsw_unreachable{tail}.npy"] = functools.partial(_save_rows, part.unreachable)
    return writers


def _save_rows(rows: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(rows, dtype=np.int64), allow_pickle=False)


def _positions(
    files: Collection[str], name: str, path_of: Callable[[str], Path]
) -> np.ndarray | None:
    """A 1-d int64 array file of the index, or None when the index has none."""
    if name not in files:
        return None
    try:
        array = np.load(path_of(name), allow_pickle=False)
    except IndexCorruptError:
        raise
    except Exception as exc:  # numpy raises ValueError/OSError on a bad file
        raise IndexCorruptError(f"{name}: unreadable ({exc})") from None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise IndexCorruptError(f"{name}: not a 1-d integer array")
    return array.astype(np.int64)


def open_searcher(
    conf: dict[str, Any], files: Collection[str], path_of: Callable[[str], Path]
) -> Searcher:
    """The index described by a manifest's ``index`` section, from its files (``path_of``
    gives a checked path). Raises IndexCorruptError."""
    sizes = conf.get("shards")
    names = [f"-{i:03d}" for i in range(len(sizes))] if sizes is not None else [""]
    parts = []
    for tail in names:
        rows = _positions(files, f"faiss_rows{tail}.npy", path_of)
        unreachable = _positions(files, f"hnsw_unreachable{tail}.npy", path_of)
        if f"index{tail}.faiss" not in files:
            raise IndexCorruptError(f"the manifest lists no index{tail}.faiss")
        index = load(path_of(f"index{tail}.faiss"))
        if unreachable is not None and (
            len(unreachable) and (unreachable.min() < 0 or unreachable.max() >= index.ntotal)
        ):
            raise IndexCorruptError(f"hnsw_unreachable{tail}.npy: positions out of range")
        kind, params = conf["type"], conf.get("params") or {}
        parts.append(VectorIndex(index, kind, params, rows, unreachable))
    if sizes is None:
        return parts[0]
    sharded = ShardedIndex(parts)
    if sharded.sizes != list(sizes):
        raise IndexCorruptError(f"shards hold {sharded.sizes} items, the manifest says {sizes}")
    return sharded
