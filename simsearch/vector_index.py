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
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

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
    index: Any, vectors: np.ndarray, k: int, params: Any = None, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: scores (n, k') float32, positions (n, k') int64 (-1: none);
    k' = min(k, ntotal). ``params``: FAISS SearchParameters (a selector, efSearch, nprobe).

    ``threads``: at most this many OpenMP threads for this call (None: FAISS's setting for
    the calling thread); fewer than SMALL_BATCH queries run on one.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != index.d:
        raise ConfigError(f"query vectors have shape {vectors.shape}, expected (n, {index.d})")
    k = min(int(k), int(index.ntotal))
    if k <= 0 or len(vectors) == 0:
        return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
    extra = {"params": params} if params is not None else {}
    return _on_threads(threads, len(vectors), lambda: index.search(vectors, k, **extra))


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
        lambda: faiss.knn_inner_products_by_idx(  # type: ignore[attr-defined]  # not in the stubs
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
        ),
    )
    return scores, rows


def _on_threads(threads: int | None, n: int, call: Callable[[], Any]) -> Any:
    """``call()`` with at most ``threads`` OpenMP threads (None: FAISS's setting for the
    calling thread, which is per thread and restored after); fewer than SMALL_BATCH queries on
    one: starting a thread team costs more than such a search (on a busy machine, ms)."""
    wanted = 1 if n < SMALL_BATCH else threads
    if wanted is None:
        return call()
    import faiss

    before = faiss.omp_get_max_threads()
    if before == wanted:
        return call()
    faiss.omp_set_num_threads(wanted)
    try:
        return call()
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
    """

    def __init__(
        self, index: Any, kind: str, params: dict[str, Any], rows: np.ndarray | None = None
    ) -> None:
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.rows = rows
        live = np.ones(0, bool) if rows is None else np.asarray(rows) >= 0
        self.tombstones = len(live) - int(np.count_nonzero(live))
        # Positions that may be returned (all but tombstones), as a FAISS selector bitmap.
        self._live = _Selection(live) if self.tombstones else None

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
    def count(self) -> int:
        """Catalog rows held (FAISS positions minus tombstones)."""
        return self.ntotal - self.tombstones

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
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) unit vectors -> scores (n, k'), catalog rows (n, k'); -1 rows: no result.

        ``allowed``: a bool mask over the catalog rows; only those are returned (a FAISS
        selector inside the search, so the k returned are the best allowed ones). An HNSW search
        looks at no fewer than k candidates (efSearch >= k). Approximate indexes may still
        return fewer than k'; the caller completes those rows (see SearchIndex). ``threads``:
        as in :func:`search`. ``catalog``: the (count, d) vectors of the catalog rows; an
        ``ivf-fastscan`` index re-ranks its ``refine`` x k best candidates with them (without,
        its scores are the quantized codes' approximations).
        """
        selection = self._live
        live = self.count
        if allowed is not None:
            positions_allowed = (
                allowed
                if self.rows is None
                else ((self.rows >= 0) & allowed[np.maximum(self.rows, 0)])
            )
            selection = _Selection(positions_allowed)
            live = selection.count
        k = min(int(k), live)
        if k <= 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        params = self._search_params(k, selection)
        refine = int(self.params.get("refine") or 1) if self.kind == FASTSCAN else 1
        if refine > 1 and catalog is not None and self.rows is None:
            _, candidates = search(self.index, vectors, k * refine, params, threads)
            return rerank(vectors, catalog, candidates, k, threads)
        scores, positions = search(self.index, vectors, k, params, threads)
        if self.rows is None:
            return scores, positions
        return scores, np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)

    def _search_params(self, k: int, selection: _Selection | None) -> Any:
        import faiss

        params: Any
        if self.kind == "hnsw":
            own = int(self.index.hnsw.efSearch)
            ef = max(own, k)
            if selection is not None and selection.count < self.ntotal:
                # A filter keeps a share of what the graph walk meets: look at more candidates.
                ef = max(ef, int(k * self.ntotal / max(selection.count, 1)))
            if selection is None and ef == own:
                return None  # the index's own setting: no parameters to make per call
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in the stubs
            params.efSearch = min(ef, MAX_EF_SEARCH)
        elif selection is None:
            return None  # flat and IVF: nothing differs from the index's own settings
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
        if self.kind in IVF_TYPES:
            import faiss

            clone = faiss.clone_index(self.index)
            clone.reset()  # keeps the trained coarse quantizer (and product quantizer)
            if len(vectors):
                clone.add(np.ascontiguousarray(vectors, dtype=np.float32))
            return VectorIndex(clone, self.kind, self.params)
        return VectorIndex.build(vectors, self.kind, self.params)


class _Selection:
    """A set of FAISS positions as an ``IDSelectorBitmap`` (the bitmap kept alive with it)."""

    def __init__(self, mask: np.ndarray) -> None:
        import faiss

        self.count = int(np.count_nonzero(mask))
        self._bits = np.packbits(mask, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bits))


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

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        threads: int | None = None,
        catalog: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for shard, start, end in zip(self.shards, self.starts[:-1], self.starts[1:], strict=True):
            part_allowed = None if allowed is None else allowed[start:end]
            part_catalog = None if catalog is None else catalog[start:end]
            scores, rows = shard.search(vectors, k, part_allowed, threads, part_catalog)
            parts.append((scores, np.where(rows >= 0, rows + start, -1)))
        return merge_top_k(parts, k)

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
    vectors: np.ndarray, kind: str, params: dict[str, Any], sizes: list[int]
) -> ShardedIndex:
    """Shards over consecutive slices of ``vectors`` of the given sizes. IVF shards share one
    coarse quantizer, trained once on all the vectors (train once, add in parts)."""
    if sum(sizes) != len(vectors):
        raise ConfigError(f"shard sizes add up to {sum(sizes)}, not {len(vectors)}")
    empty = trained_empty(vectors, kind, params) if kind in IVF_TYPES else None
    shards, start = [], 0
    for size in sizes:
        part = vectors[start : start + size]
        start += size
        if empty is None:
            shards.append(VectorIndex.build(part, kind, params))
        else:
            shards.append(VectorIndex(filled(empty, part), kind, params))
    return ShardedIndex(shards)


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


def shard_sizes(count: int, shards: int) -> list[int]:
    """``count`` items in ``shards`` consecutive parts, as even as possible."""
    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    base, extra = divmod(count, shards)
    return [base + (i < extra) for i in range(shards)]


Searcher = VectorIndex | ShardedIndex
SHARD_FILE = re.compile(r"(index-\d{3,4}\.faiss|faiss_rows-\d{3,4}\.npy)")


def is_index_file(name: str) -> bool:
    """A file of the index's FAISS part (one index, or its shards)."""
    return name in ("index.faiss", "faiss_rows.npy") or bool(SHARD_FILE.fullmatch(name))


def describe(searcher: Searcher) -> dict[str, Any]:
    """The manifest's ``index`` section for ``searcher``."""
    conf: dict[str, Any] = {"type": searcher.kind, "params": dict(searcher.params)}
    if isinstance(searcher, ShardedIndex):
        conf["shards"] = searcher.sizes
    if searcher.tombstones:
        conf["tombstones"] = searcher.tombstones
    return conf


def file_writers(searcher: Searcher) -> dict[str, Callable[[Path], None]]:
    """File name -> writer, for every file of ``searcher``."""
    parts = searcher.shards if isinstance(searcher, ShardedIndex) else [searcher]
    suffix = (
        [f"-{i:03d}" for i in range(len(parts))] if isinstance(searcher, ShardedIndex) else [""]
    )
    writers: dict[str, Callable[[Path], None]] = {}
    for part, tail in zip(parts, suffix, strict=True):
        writers[f"index{tail}.faiss"] = functools.partial(save, part.index)
        if part.rows is not None:
            writers[f"faiss_rows{tail}.npy"] = functools.partial(_save_rows, part.rows)
    return writers


def _save_rows(rows: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(rows, dtype=np.int64), allow_pickle=False)


def open_searcher(
    conf: dict[str, Any], files: Collection[str], path_of: Callable[[str], Path]
) -> Searcher:
    """The index described by a manifest's ``index`` section, from its files (``path_of``
    gives a checked path). Raises IndexCorruptError."""
    sizes = conf.get("shards")
    names = [f"-{i:03d}" for i in range(len(sizes))] if sizes is not None else [""]
    parts = []
    for tail in names:
        rows = None
        if f"faiss_rows{tail}.npy" in files:
            try:
                rows = np.load(path_of(f"faiss_rows{tail}.npy"), allow_pickle=False)
            except IndexCorruptError:
                raise
            except Exception as exc:  # numpy raises ValueError/OSError on a bad file
                raise IndexCorruptError(f"faiss_rows{tail}.npy: unreadable ({exc})") from None
            if rows.ndim != 1 or rows.dtype.kind not in "iu":
                raise IndexCorruptError(f"faiss_rows{tail}.npy: not a 1-d integer array")
        if f"index{tail}.faiss" not in files:
            raise IndexCorruptError(f"the manifest lists no index{tail}.faiss")
        index = load(path_of(f"index{tail}.faiss"))
        parts.append(VectorIndex(index, conf["type"], conf.get("params") or {}, rows))
    if sizes is None:
        return parts[0]
    sharded = ShardedIndex(parts)
    if sharded.sizes != list(sizes):
        raise IndexCorruptError(f"shards hold {sharded.sizes} items, the manifest says {sizes}")
    return sharded
