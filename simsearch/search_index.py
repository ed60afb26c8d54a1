"""``SearchIndex``: one object owns an index - encoder, FAISS index, item metadata, manifest."""

from __future__ import annotations

import hashlib
import io
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from simsearch import parallel, storage, vector_index
from simsearch.encoders import Encoder, load_encoder, normalize
from simsearch.errors import (
    ConfigError,
    DuplicateIdError,
    IncompatibleIndexError,
    IndexChangedError,
    IndexCorruptError,
    IndexExistsError,
    ItemNotFoundError,
)
from simsearch.hit import Hit, ItemColumns, hits_from_columns, many_objects
from simsearch.images import (
    AS_FOUND,
    ImageInput,
    Steps,
    preprocess,
    preprocess_array,
    preprocess_views,
)
from simsearch.vector_index import VectorIndex

if TYPE_CHECKING:
    from simsearch.duplicates import Duplicates
    from simsearch.progress import Reporter

MAX_K = 1000
"""The most neighbours one query may ask for (library, CLI and server alike)."""
# A filter that lets at most this many items through is answered by exact search over them:
# cheaper than walking an index for the few that match (see scripts/bench_filters.py).
EXACT_UP_TO = 8192
MASKS_KEPT = 16  # filter masks cached per index version
Floats = NDArray[np.float32]
Rows = NDArray[np.int64]
# The files every index has (the encoder aside); anything else in the manifest is an extra.
DATA_FILES = ("vectors.npy", "items.npz", "images.npy")  # and the FAISS index's files
EXACT_BATCH = 256  # queries per block of exact search (a block's scores: 256 x catalog floats)
# Array shapes taken as a batch of 28x28 images (besides (n, 28, 28)).
IMAGE_SHAPES = ((28, 28), (28, 28, 1), (1, 28, 28), (784,))
LOCALITY_ANCHORS = 256  # catalog vectors that a batch's queries are grouped around
LOCALITY_BLOCK = 8192  # queries compared with them at a time (8 MB of scores)
ONE = np.float32(1.0)  # of the scores' type: numpy then clips them without casting
LOAD_ATTEMPTS = 3  # a writer may replace the version being read; then read the new one
# Where a loaded index's FAISS part comes from: (index directory, its manifest) -> searcher.
SearcherSource = Callable[[Path, dict[str, Any]], vector_index.Searcher]


def default_index_dir() -> Path:
    """``SIMSEARCH_INDEX_DIR`` when set, else ``indexes/fashion-mnist``."""
    return Path(os.environ.get("SIMSEARCH_INDEX_DIR") or "indexes/fashion-mnist")


class StoredImages:
    """The catalog images (n, 28, 28) uint8, memory-mapped from a file opened at load.

    The mapping stays valid when a newer version of the index removes the file, so a loaded index
    keeps answering from its own snapshot. The sha256 is checked on first use (it is the largest
    file and not needed to search): through the open mapping, never by reopening the path.
    """

    def __init__(self, path: Path, sha256: str | None) -> None:
        self.name = path.name
        self._path = path
        self._sha256 = sha256
        self._lock = threading.Lock()
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"npy version {version}")
                offset = f.tell()
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, SyntaxError) as exc:
            raise IndexCorruptError(f"{path}: unreadable data file ({exc})") from None
        if dtype != np.uint8 or fortran or len(shape) != 3 or tuple(shape[1:]) != (28, 28):
            raise IndexCorruptError(f"{path}: expected (n, 28, 28) uint8 images")
        if size != offset + int(np.prod(shape)):
            raise IndexCorruptError(f"{path}: {size} bytes, not a whole (n, 28, 28) array")
        self.array = np.ndarray(shape, np.uint8, buffer=self._map, offset=offset)

    def __len__(self) -> int:
        return len(self.array)

    def verified(self) -> np.ndarray:
        """The images, once their sha256 matched the manifest; else IndexCorruptError."""
        if self._sha256 is not None:
            with self._lock:
                if self._sha256 is not None:
                    if hashlib.sha256(self._map).hexdigest() != self._sha256:
                        raise IndexCorruptError(
                            f"{self._path}: sha256 does not match the manifest (file changed?)"
                        )
                    self._sha256 = None
        return self.array


class _Closed:
    """Stands in for the parts of a closed index: any use says so."""

    def __getattr__(self, name: str) -> Any:
        raise ConfigError("this index is closed")


@dataclass(frozen=True)
class QueryResult:
    """One answered query: the model input the image became, and its hits."""

    pixels: NDArray[np.uint8]  # (28, 28): the view of the image that matched the first hit
    hits: list[Hit]
    steps: Steps | None = None  # what preprocessing did, when asked (see images.explain)
    framing: str = AS_FOUND  # how that view frames the object (see images.preprocess_views)


@dataclass(frozen=True)
class _Where:
    """Which catalog items a search may return, and the similarity under which none."""

    labels: tuple[int, ...] | None = None
    id_prefix: str | None = None
    exclude_ids: frozenset[str] = frozenset()
    min_similarity: float | None = None

    @property
    def filters(self) -> tuple[Any, ...]:
        return (self.labels, self.id_prefix, self.exclude_ids)


NO_FILTER = _Where()


@dataclass(frozen=True, eq=False)
class _Version:
    """Everything a query reads, consistent with itself. Never changed: add and remove make a
    new one and swap it in, so a query running in another thread keeps a whole version."""

    vectors: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    images: np.ndarray | StoredImages | None
    vindex: vector_index.Searcher
    # Filled lazily: id -> row, and the objects Hits show, per row returned by queries.
    row_index: dict[str, int] = field(default_factory=dict)
    hit_items: ItemColumns = field(init=False)
    masks: dict[tuple[Any, ...], NDArray[np.bool_]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hit_items", ItemColumns(self.ids, self.labels, self.sources))

    def row_of(self, item_id: str) -> int:
        if not self.row_index and len(self.ids):
            self.row_index.update((str(i), row) for row, i in enumerate(self.ids.tolist()))
        row = self.row_index.get(item_id)
        if row is None:
            raise ItemNotFoundError(f"no item {item_id!r} in the index")
        return row

    def allowed(self, where: _Where) -> NDArray[np.bool_] | None:
        """Bool mask of the rows the filters let through (None: no filter); cached."""
        if where.labels is None and where.id_prefix is None and not where.exclude_ids:
            return None
        mask = self.masks.get(where.filters)
        if mask is None:
            mask = np.ones(len(self.ids), dtype=bool)
            if where.labels is not None:
                mask &= np.isin(self.labels, where.labels)
            if where.id_prefix is not None:
                mask &= np.char.startswith(self.ids, where.id_prefix)
            for item_id in where.exclude_ids:
                row = self.row_index_of(item_id)
                if row is not None:
                    mask[row] = False
            if len(self.masks) >= MASKS_KEPT:
                self.masks.pop(next(iter(self.masks)))
            self.masks[where.filters] = mask
        return mask

    def row_index_of(self, item_id: str) -> int | None:
        try:
            return self.row_of(item_id)
        except ItemNotFoundError:
            return None

    def image_array(self) -> np.ndarray:
        if self.images is None:
            raise ConfigError("this index has no stored images")
        if isinstance(self.images, StoredImages):
            return self.images.verified()
        return self.images


class SearchIndex:
    """A searchable catalog of images.

    Build one with ``simsearch.build.build_index``, persist it with :meth:`save`, open it with
    :meth:`load`. Vectors are L2-normalised codes; similarity is their inner product (cosine).

    Thread safety: queries may run in any number of threads while another thread adds or
    removes items; each query sees the index entirely before or entirely after the change.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        encoder_file: Path,
        vectors: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray,
        sources: np.ndarray,
        images: np.ndarray | StoredImages | None,
        manifest: dict[str, Any],
        extra_files: dict[str, Path] | dict[str, storage.Existing] | None = None,
        faiss_index: Any = None,
        directory: Path | None = None,
        faiss_rows: np.ndarray | None = None,
        searcher: vector_index.Searcher | None = None,
    ) -> None:
        n = len(ids)
        if not (len(vectors) == len(labels) == len(sources) == n):
            raise IndexCorruptError(
                f"inconsistent index: {len(vectors)} vectors, {n} ids, {len(labels)} labels"
            )
        if images is not None and len(images) != n:
            raise IndexCorruptError(f"inconsistent index: {len(images)} images for {n} ids")
        self.encoder = encoder
        self.encoder_file = encoder_file
        self.manifest = manifest
        self.extra_files: dict[str, storage.Existing] = {
            name: source
            if isinstance(source, storage.Existing)
            else storage.Existing(source, storage.sha256_file(source))
            for name, source in (extra_files or {}).items()
        }
        self.directory = directory
        self.label_names: list[str] = list(manifest.get("catalog", {}).get("label_names") or [])
        self.dim = int(manifest["embedding_dim"])
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexCorruptError(
                f"vectors have shape {vectors.shape}, the manifest says dimension {self.dim}"
            )
        if encoder.dim != self.dim:
            raise IndexCorruptError(
                f"encoder produces {encoder.dim}-d codes, the index holds {self.dim}-d vectors"
            )
        conf = manifest["index"]
        params = conf.get("params") or {}
        if searcher is not None:
            vindex = searcher
        elif faiss_index is not None:
            vindex = VectorIndex(faiss_index, conf["type"], params, faiss_rows)
        else:
            vindex = VectorIndex.build(vectors, conf["type"], params)
        vindex.check(n, self.dim)
        self._version = _Version(vectors, ids, labels, sources, images, vindex)
        self._writing = threading.Lock()  # one change at a time; queries never wait for it
        self._threads = parallel.available_cores()
        self._disk_digest: str | None = None  # the manifest this index was loaded from / saved
        self._unsaved = False  # changed in memory since it was loaded or saved

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the encoder sessions, the mapped images and the FAISS index now (they go
        anyway when the object is collected); any later use raises ConfigError."""
        self.encoder = _Closed()
        self._version = _Closed()  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        """An index is pickled as the directory it was loaded from (a process pool started
        with spawn gets it that way), and loaded again on the other side."""
        if self.directory is None or self._unsaved:
            raise ConfigError("only a saved, unchanged index can be pickled: save() it first")
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(SearchIndex.load(state["directory"]).__dict__)

    def __repr__(self) -> str:
        if isinstance(self._version, _Closed):
            return "<SearchIndex: closed>"
        where = f" at {str(self.directory)!r}" if self.directory is not None else ""
        kind = self._version.vindex.kind
        return f"<SearchIndex{where}: {len(self):,} items, {self.dim}-d, {kind}>"

    # ------------------------------------------------------------------ the current version

    @property
    def vectors(self) -> np.ndarray:
        return self._version.vectors

    @property
    def ids(self) -> np.ndarray:
        return self._version.ids

    @property
    def labels(self) -> np.ndarray:
        return self._version.labels

    @property
    def sources(self) -> np.ndarray:
        return self._version.sources

    @property
    def searcher(self) -> vector_index.Searcher:
        """The FAISS part: one :class:`VectorIndex`, a :class:`ShardedIndex`, or shards
        searched elsewhere (see ``load(searcher_from=...)``)."""
        return self._version.vindex

    @property
    def faiss_index(self) -> Any:
        """The FAISS index (None for a sharded index: see :attr:`searcher`)."""
        vindex = self._version.vindex
        return vindex.index if isinstance(vindex, VectorIndex) else None

    @property
    def faiss_rows(self) -> np.ndarray | None:
        vindex = self._version.vindex
        return vindex.rows if isinstance(vindex, VectorIndex) else None

    @property
    def threads(self) -> int:
        """Threads a large batch runs on (embedding, batch queries, :meth:`search`,
        :meth:`search_arrays`): every core this process may use, unless set. Each thread holds
        about 20 MB of encoder working memory once used (batches go through in chunks of
        ``simsearch.parallel.CHUNK`` images); 1 runs everything in the calling thread."""
        return self._threads

    @threads.setter
    def threads(self, threads: int | None) -> None:
        self._threads = parallel.check_threads(threads)

    @property
    def images(self) -> np.ndarray:
        """All catalog images (n, 28, 28) uint8 (memory-mapped when loaded; its checksum is
        verified on first use). Raises ItemNotFoundError when the index has none (see
        :attr:`has_item_images`)."""
        self._check_item_images()
        return self._version.image_array()

    @property
    def has_item_images(self) -> bool:
        """False for an index built from embeddings that did not keep the model inputs (``embed
        --no-images``, ``export`` without ``--images``): it searches like any other, but has no
        item images to show (its images.npy holds zeros)."""
        return self.manifest.get("catalog", {}).get("item_images", True) is not False

    def _check_item_images(self) -> None:
        if not self.has_item_images:
            raise ItemNotFoundError(
                "this index has no item images (it was built from embeddings without them)"
            )

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        verify: bool = True,
        *,
        searcher_from: SearcherSource | None = None,
    ) -> SearchIndex:
        """Open the index at ``directory``; checks the manifest, every file's sha256 and shapes.

        What a query needs is read (or mapped) now, so the loaded index keeps answering from
        this snapshot whatever later writers do to the directory. ``images.npy`` is checksummed
        on its first use. Raises IndexNotFoundError, IndexCorruptError or IncompatibleIndexError.

        ``searcher_from(directory, manifest)`` gives the FAISS part instead of opening its files
        here (shards searched by other processes: see ``simsearch.ray_serve``); it may raise
        the same errors.
        """
        directory = Path(directory)
        for attempt in range(LOAD_ATTEMPTS):
            manifest = storage.read_manifest(directory)
            try:
                return cls._load(directory, manifest, verify, searcher_from)
            except IndexCorruptError:
                # A writer may have replaced this version (and removed its files) meanwhile.
                if attempt + 1 == LOAD_ATTEMPTS or _digest_on_disk(directory) in (
                    None,
                    storage.manifest_digest(manifest),
                ):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load(
        cls,
        directory: Path,
        manifest: dict[str, Any],
        verify: bool,
        searcher_from: SearcherSource | None,
    ) -> SearchIndex:
        files = manifest["files"]

        def path(name: str) -> Path:
            return storage.file_path(directory, manifest, name, verify=verify)

        encoder_name = manifest["model"].get("encoder_file", "encoder.onnx")
        encoder_file = storage.file_path(directory, manifest, encoder_name, verify=False)
        encoder_data = _read_checked(encoder_file, files[encoder_name], verify)
        made_with = manifest["model"].get("encoder_sha256")
        if made_with and made_with != files[encoder_name].get("sha256"):
            raise IncompatibleIndexError(
                f"{directory}: {encoder_name} is not the model the vectors were made with "
                "(checksum differs); rebuild the index"
            )
        for name in DATA_FILES:
            if name not in files:
                raise IndexCorruptError(f"{directory / storage.MANIFEST}: lists no file {name!r}")
        try:
            vectors = np.load(path("vectors.npy"), allow_pickle=False)
            with np.load(path("items.npz"), allow_pickle=False) as items:
                ids, labels, sources = items["ids"], items["labels"], items["sources"]
        except IndexCorruptError:
            raise
        except Exception as exc:  # numpy raises ValueError/OSError/KeyError/zipfile errors
            raise IndexCorruptError(f"{directory}: unreadable data file ({exc})") from None
        _check_items(directory, vectors, ids, labels, sources)
        if len(ids) != manifest["count"]:
            raise IndexCorruptError(
                f"{directory}: {len(ids)} items, the manifest says {manifest['count']}"
            )
        images = StoredImages(
            storage.file_path(directory, manifest, "images.npy", verify=False),
            files["images.npy"]["sha256"] if verify else None,
        )
        if searcher_from is None:
            searcher = vector_index.open_searcher(manifest["index"], files, path)
        else:
            searcher = searcher_from(directory, manifest)
        extra = {
            name: storage.Existing(directory / entry["path"], entry["sha256"])
            for name, entry in files.items()
            if name not in {encoder_name, *DATA_FILES} and not vector_index.is_index_file(name)
        }
        index = cls(
            encoder=load_encoder(encoder_file, encoder_data),
            encoder_file=encoder_file,
            vectors=vectors,
            ids=ids,
            labels=labels,
            sources=sources,
            images=images,
            manifest=manifest,
            extra_files=extra,
            directory=directory,
            searcher=searcher,
        )
        index._disk_digest = storage.manifest_digest(manifest)
        return index

    def save(self, directory: str | os.PathLike[str], force: bool = False) -> None:
        """Write the index to ``directory`` atomically (see ``simsearch.storage``), holding the
        directory's writer lock.

        Replacing a different existing index needs ``force=True``; re-saving the directory this
        index was loaded from does not, but raises IndexChangedError when another writer saved
        it since (its change would be lost): load it again and redo the change.
        """
        directory = Path(directory)
        same = self.directory is not None and _same_path(self.directory, directory)
        with self._writing, storage.locked(directory, create=True):
            if storage.has_index(directory):
                if same and self._disk_digest is not None:
                    if _digest_on_disk(directory) != self._disk_digest:
                        raise IndexChangedError(
                            f"the index at {directory} changed since it was loaded (another "
                            "writer saved it); load it again and redo the change"
                        )
                elif not (force or same):
                    raise IndexExistsError(
                        f"an index already exists at {directory}; use --force to replace it"
                    )
            self._write(directory)

    def _write(self, directory: Path) -> None:
        version = self._version
        images = version.image_array()  # verified first: a changed file is not copied on
        encoder = self.encoder
        files: dict[str, storage.FileSource] = {
            self.encoder_file.name: lambda p: _write_bytes(p, encoder.data),
            "vectors.npy": lambda p: _save_npy(p, version.vectors),
            "items.npz": lambda p: _save_items(p, version.ids, version.labels, version.sources),
            "images.npy": lambda p: _save_npy(p, images),
            **vector_index.file_writers(version.vindex),
            **self.extra_files,
        }
        manifest = {
            **self.manifest,
            "index": vector_index.describe(version.vindex),
            "count": len(version.ids),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        manifest.pop("manifest_sha256", None)
        manifest.setdefault("catalog", {})["label_names"] = list(self.label_names)
        self.manifest = storage.write_index(directory, files, manifest)
        self._disk_digest = storage.manifest_digest(self.manifest)
        self._unsaved = False
        self.directory = directory
        written = {
            name: directory / entry["path"] for name, entry in self.manifest["files"].items()
        }
        self.encoder_file = written[self.encoder_file.name]
        self.extra_files = {
            name: storage.Existing(written[name], source.sha256)
            for name, source in self.extra_files.items()
        }

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._version.ids)

    def embed(self, images: Sequence[ImageInput] | np.ndarray) -> Floats:
        """Images (paths, bytes, PIL images or arrays) -> (n, d) float32 L2-normalised vectors.

        An array of shape (n, 28, 28), (n, 28, 28, 1), (n, 1, 28, 28) or (n, 784) is taken as n
        images; an empty batch gives an empty (0, d) result. Raises InvalidImageError.
        """
        return self.embed_pixels(_to_pixels(images))

    def embed_pixels(self, pixels: np.ndarray) -> Floats:
        """Preprocessed (n, 28, 28) uint8 pixels -> (n, d) float32 L2-normalised vectors."""
        pixels = _check_pixels(pixels)
        if not len(pixels):
            return np.zeros((0, self.dim), np.float32)
        return normalize(self.encoder.encode(pixels, self._threads))

    def search(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        labels: Sequence[int | str] | None = None,
        id_prefix: str | None = None,
        exclude_ids: Sequence[str] | None = None,
        min_similarity: float | None = None,
        max_distance: float | None = None,
    ) -> tuple[Floats, Rows]:
        """Low level, FAISS-shaped: (n, d) float32 unit vectors -> similarities (n, k'),
        catalog rows (n, k') with k' = min(k, items that pass the filters), best first.

        Rows are -1 (similarity NaN) where a query has fewer results than k' (a similarity
        threshold cut it short); :meth:`ids_for` turns rows into ids. Filters and thresholds
        as in :meth:`query`.
        """
        where = self._where(labels, id_prefix, exclude_ids, min_similarity, max_distance)
        vectors = _check_vectors(vectors, self.dim)
        k = _check_k(k)
        if len(vectors) < vector_index.SMALL_BATCH:  # one chunk (the usual single query)
            return self._search(self._version, vectors, k, where, self._threads)
        return _joined(self._answers(self._version, vectors, k, where, embed=False))

    def search_arrays(
        self,
        images_or_vectors: Sequence[ImageInput] | np.ndarray,
        k: int = 10,
        **filters: Any,
    ) -> tuple[NDArray[np.str_], Floats]:
        """For pipelines: images, or (n, d) float vectors (normalised here), -> ``(ids,
        similarities)`` numpy arrays of shape (n, k'): ids as strings ("" where a query has
        fewer results), similarities float32 rounded to 6 decimals as Hits are (an item matched
        with itself: 1.0), NaN where there is no result. Filters as in :meth:`query`."""
        version = self._version
        data = images_or_vectors
        where = self._where(**filters)
        k = _check_k(k)
        if (
            isinstance(data, np.ndarray)
            and data.dtype.kind == "f"
            and data.shape[-1:] == (self.dim,)
        ):
            vectors = normalize(_check_vectors(data, self.dim))
            scores, rows = _joined(self._answers(version, vectors, k, where, embed=False))
        else:
            pixels, owner = _to_views(data)
            scores, rows = self._viewed(version, pixels, owner, k, where)[:2]
        return _ids_of(version, rows), np.round(scores, 6)

    def ids_for(self, rows: np.ndarray) -> NDArray[np.str_]:
        """Catalog rows (any shape, as :meth:`search` returns them) -> ids; "" for -1."""
        return _ids_of(self._version, np.asarray(rows))

    def duplicates(
        self,
        threshold: float | None = None,
        *,
        against: SearchIndex | str | os.PathLike[str] | None = None,
        exact: bool = False,
        reporter: Reporter | None = None,
    ) -> Duplicates:
        """Near-duplicate groups of this index's items (or between them and ``against``: a
        folder, an image file or an index made with the same model). ``threshold``: least
        cosine similarity, in [-1, 1] (default ``simsearch.duplicates.DEFAULT_THRESHOLD``).
        Iterate the result for :class:`~simsearch.duplicates.DuplicateGroup` s; the rule that
        makes them is in :mod:`simsearch.duplicates`. Raises ConfigError, IncompatibleIndexError.
        """
        from simsearch.duplicates import find_duplicates

        return find_duplicates(self, threshold, against=against, exact=exact, reporter=reporter)

    def query_detail(
        self, image: ImageInput, k: int = 10, explain: bool = False, **filters: Any
    ) -> QueryResult:
        """Like :meth:`query`, with the (28, 28) uint8 model input the image became (and with
        ``explain``, what preprocessing found: :class:`simsearch.images.Steps`): the one query
        path the CLI and the server share."""
        version = self._version
        where = self._where(**filters)
        k = _check_k(k)
        views = preprocess_views(image, explain)
        owner = np.zeros(len(views.pixels), np.intp)
        scores, rows, best = self._viewed(version, views.pixels, owner, k, where)
        view = max(int(best[0]), 0)
        hits = self._hit_lists(version, scores, rows)[0]
        return QueryResult(views.pixels[view], hits, views.steps, views.names[view])

    def query(self, image: ImageInput, k: int = 10, **filters: Any) -> list[Hit]:
        """The k most similar catalog items to one image (path, bytes, PIL image or array).

        Filters (applied inside the index search, so k hits come back whenever k items pass):
        ``labels`` (class names or ids), ``id_prefix`` (ids starting with it), ``exclude_ids``;
        thresholds ``min_similarity`` (in [-1, 1]) or ``max_distance`` (in [0, 2]), under which
        fewer than k hits is a normal answer. A filter that matches nothing gives [].
        """
        return self.query_batch([image], k, **filters)[0]

    def query_batch(
        self, images: Sequence[ImageInput] | np.ndarray, k: int = 10, **filters: Any
    ) -> list[list[Hit]]:
        """One list of hits per image, in the order given. A photo is searched in several
        framings (:func:`simsearch.images.preprocess_views`), each hit with its best
        similarity. Raises InvalidImageError."""
        pixels, owner = _to_views(images)
        if (owner == np.arange(len(owner))).all():
            return self.query_pixels(pixels, k, **filters)  # one view each
        version = self._version
        where = self._where(**filters)
        scores, rows = self._viewed(version, pixels, owner, _check_k(k), where)[:2]
        return self._hit_lists(version, scores, rows)

    def query_pixels(self, pixels: np.ndarray, k: int = 10, **filters: Any) -> list[list[Hit]]:
        """Like :meth:`query_batch` for already preprocessed (n, 28, 28) uint8 pixels."""
        version = self._version  # one version for the search and the hits
        where = self._where(**filters)
        k = _check_k(k)
        pixels = _check_pixels(pixels)
        hits: list[list[Hit]] = [[] for _ in range(len(pixels))]
        # The calling thread makes the Hits of each chunk while the next ones are searched;
        # the garbage collector then looks at them once, after the batch (see many_objects).
        with many_objects():
            for positions, scores, rows in self._answers(version, pixels, k, where, embed=True):
                for position, query_hits in zip(
                    positions.tolist(), self._hit_lists(version, scores, rows), strict=True
                ):
                    hits[position] = query_hits
        return hits

    # ------------------------------------------------------------------ search internals

    def _where(
        self,
        labels: Sequence[int | str] | None = None,
        id_prefix: str | None = None,
        exclude_ids: Sequence[str] | None = None,
        min_similarity: float | None = None,
        max_distance: float | None = None,
    ) -> _Where:
        """Checked filters and threshold (ConfigError on a bad value)."""
        if labels is id_prefix is exclude_ids is min_similarity is max_distance is None:
            return NO_FILTER
        label_ids = None
        if labels is not None:
            if isinstance(labels, str | int):
                labels = [labels]
            label_ids = tuple(sorted({self._label_id(label) for label in labels}))
        if id_prefix is not None and not isinstance(id_prefix, str):
            raise ConfigError(f"id_prefix must be a string, got {id_prefix!r}")
        if isinstance(exclude_ids, str):
            exclude_ids = [exclude_ids]
        threshold = None
        if min_similarity is not None:
            threshold = _check_number(min_similarity, -1.0, 1.0, "min_similarity")
        if max_distance is not None:
            from_distance = 1.0 - _check_number(max_distance, 0.0, 2.0, "max_distance")
            threshold = from_distance if threshold is None else max(threshold, from_distance)
        return _Where(label_ids, id_prefix or None, frozenset(exclude_ids or ()), threshold)

    def _label_id(self, label: int | str) -> int:
        if isinstance(label, int | np.integer) and not isinstance(label, bool):
            number = int(label)
        elif isinstance(label, str) and label in self.label_names:
            return self.label_names.index(label)
        elif isinstance(label, str) and label.strip().isdigit():
            number = int(label)
        else:
            known = ", ".join(self.label_names) or "none (this catalog has no labels)"
            raise ConfigError(f"unknown label {label!r}; this index knows: {known}")
        if number < 0 or (self.label_names and number >= len(self.label_names)):
            raise ConfigError(
                f"label id {number} out of range (0-{max(len(self.label_names) - 1, 0)})"
            )
        return number

    def _answers(
        self, version: _Version, data: np.ndarray, k: int, where: _Where, embed: bool
    ) -> Iterator[tuple[Rows, Floats, Rows]]:
        """:meth:`_search` over a batch of unit vectors, or of (n, 28, 28) uint8 pixels embedded
        first (``embed``), in chunks on :attr:`threads` threads, each chunk searched on one
        core: (the chunk's positions in the batch, its scores, its rows) per chunk, in turn."""
        parts = parallel.chunks(len(data), self._threads)
        vectors = self.embed_pixels(data) if embed else data  # in chunks on the threads too
        if len(parts) <= 1:  # one chunk: in this thread, FAISS on all the threads allowed
            scores, rows = self._search(version, vectors, k, where, self._threads)
            return iter(((np.arange(len(vectors)), scores, rows),))
        version.allowed(where)  # the filter mask, made (and cached) once for every chunk
        order = _by_locality(version, vectors)

        def answer(positions: Rows) -> tuple[Rows, Floats, Rows]:
            return positions, *self._search(version, vectors[positions], k, where, threads=1)

        return parallel.map_in_order(answer, [order[p] for p in parts], self._threads)

    def _search(
        self, version: _Version, vectors: Floats, k: int, where: _Where, threads: int
    ) -> tuple[Floats, Rows]:
        n = len(vectors)
        allowed = version.allowed(where)
        candidates = None if allowed is None else np.flatnonzero(allowed)
        available = len(version.ids) if candidates is None else len(candidates)
        k = min(k, available)
        if k == 0 or n == 0:
            return np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
        if candidates is not None and available <= EXACT_UP_TO:
            scores, rows = _exact(version.vectors, vectors, k, candidates)
        else:
            scores, rows = version.vindex.search(
                vectors, k, allowed, threads=threads, catalog=version.vectors
            )
            # FAISS fills a row's end with -1 when it found fewer than k: complete those rows.
            # (The test in Python: for one query, a third of what numpy's takes.)
            if min(rows[:, -1].tolist()) < 0:
                short = rows[:, -1] < 0
                scores[short], rows[short] = _exact(version.vectors, vectors[short], k, candidates)
        # Float rounding can step past +-1: clip. (One query's k scores are checked in Python
        # first, cheaper than numpy's two calls, which they seldom need.)
        one = scores[0].tolist() if n == 1 else None
        if one is None or min(one) < -1.0 or max(one) > 1.0:
            np.minimum(scores, ONE, out=scores)
            np.maximum(scores, -ONE, out=scores)
        if where.min_similarity is not None:
            # Judged as shown (6 decimals, see _hit_lists): an item matched with itself, 1.0
            # shown, passes min_similarity=1.0 and max_distance=0.
            below = np.round(scores.astype(np.float64), 6) < where.min_similarity
            scores[below], rows[below] = np.nan, -1
        return scores, rows

    def _viewed(
        self, version: _Version, pixels: np.ndarray, owner: np.ndarray, k: int, where: _Where
    ) -> tuple[Floats, Rows, NDArray[np.intp]]:
        """Views (m, 28, 28) of n images (``owner``: the image of each, ascending) -> per image
        the best k over its views' hits, each catalog row with its best similarity: scores and
        rows (n, k'), and the view that gave each image's first hit (-1: none)."""
        n = int(owner[-1]) + 1 if len(owner) else 0
        scores, rows = _joined(self._answers(version, pixels, k, where, embed=True))
        return _fuse(scores, rows, owner, n)

    def _hit_lists(
        self, version: _Version, scores: np.ndarray, rows: np.ndarray
    ) -> list[list[Hit]]:
        """FAISS-shaped (n, k) scores and rows -> one list of Hits per query (rows -1 left
        out: no result)."""
        # Whole-batch numpy first, then the Hits column by column: at 10 hits per query,
        # building Hits is a large share of a batch's time. Similarities are rounded to what
        # float32 vectors can tell apart (6 decimals): an item matched with itself is 1.0.
        if not rows.shape[1]:  # k' = 0: nothing passed the filters
            return [[] for _ in range(len(rows))]
        similarities = np.round(scores.astype(np.float64), 6)
        distances = np.round(1.0 - similarities, 6)
        found = rows >= 0  # -1: no result (cut by a threshold)
        ranks = np.cumsum(found, axis=1)  # 1, 2, ... over each query's results
        ids, labels, names, sources = version.hit_items.take(rows[found], self.label_names)
        with many_objects():
            hits = hits_from_columns(
                ranks[found].tolist(),
                ids,
                labels,
                names,
                similarities[found].tolist(),
                distances[found].tolist(),
                sources,
            )
        ends = itertools.accumulate(ranks[:, -1].tolist())  # (the last rank: results found)
        return [hits[start:end] for start, end in itertools.pairwise([0, *ends])]

    # ------------------------------------------------------------------ changes

    def add(
        self,
        images: Sequence[ImageInput] | np.ndarray,
        ids: Sequence[str],
        labels: Sequence[int | None] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> None:
        """Embed and append items (in memory; :meth:`save` persists). No rebuild is needed.

        Each image is preprocessed exactly as a query of it is, so an added item finds itself.
        Raises DuplicateIdError for an id already in the index (or twice in ``ids``), and
        InvalidImageError for an unusable image; on error nothing is added.
        """
        self.add_pixels(_to_pixels(images), ids, labels, sources)

    def add_pixels(
        self,
        pixels: np.ndarray,
        ids: Sequence[str],
        labels: Sequence[int | None] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> None:
        """Like :meth:`add` for already preprocessed (n, 28, 28) uint8 pixels (stored as given)."""
        pixels = _check_pixels(pixels)
        ids = [str(i) for i in ids]
        if len(ids) != len(pixels):
            raise ConfigError(f"{len(pixels)} images but {len(ids)} ids")
        labels = list(labels) if labels is not None else [None] * len(ids)
        sources = list(sources) if sources is not None else [None] * len(ids)
        if not (len(labels) == len(sources) == len(ids)):
            raise ConfigError("ids, labels and sources must have the same length")
        new_labels = np.asarray([-1 if label is None else int(label) for label in labels])
        if len(new_labels) and (new_labels.min() < -1 or new_labels.max() > np.iinfo(np.int16).max):
            raise ConfigError("labels must be None or integers between 0 and 32767")
        with self._writing:
            version = self._version
            _check_new_ids(version, ids)
            images = version.image_array()  # first: a corrupt images.npy fails before changes
            vectors = self.embed_pixels(pixels)
            self._version = _Version(
                vectors=np.concatenate([version.vectors, vectors]),
                ids=np.concatenate([version.ids.astype(str), np.asarray(ids, dtype=str)]),
                labels=np.concatenate([version.labels, new_labels.astype(np.int16)]),
                sources=np.concatenate(
                    [version.sources.astype(str), np.asarray([s or "" for s in sources], str)]
                ),
                images=np.concatenate([images, pixels]),
                vindex=version.vindex.added(vectors),
            )
            self._unsaved = True

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id (in memory; :meth:`save` persists).

        Flat and IVF indexes are refilled from the stored vectors (IVF keeps its trained
        quantizer). HNSW, which cannot delete in FAISS, keeps removed items as tombstones that
        searches skip, and rebuilds its graph once they pass 10% of it.
        Raises ItemNotFoundError (and removes nothing) when an id is unknown, ConfigError when
        every item would go (an index keeps at least one; delete its folder to drop it).
        """
        with self._writing:
            version = self._version
            rows = sorted({version.row_of(str(item_id)) for item_id in ids})
            if rows and len(rows) == len(version.ids):
                raise ConfigError(
                    f"refusing to remove all {len(rows):,} items: an index keeps at least one "
                    "(delete its folder to drop the whole index)"
                )
            images = version.image_array()  # first: a corrupt images.npy fails before changes
            keep = np.ones(len(version.ids), dtype=bool)
            keep[rows] = False
            vectors = np.ascontiguousarray(version.vectors[keep])
            self._version = _Version(
                vectors=vectors,
                ids=version.ids[keep],
                labels=version.labels[keep],
                sources=version.sources[keep],
                images=images[keep],
                vindex=version.vindex.removed(keep, vectors),
            )
            self._unsaved = True

    def model_file(self, name: str) -> Path:
        """A file training left beside the encoder (``autoencoder.keras``, ``history.json``,
        ...), checked against its sha256 before anything reads it.

        Raises ItemNotFoundError when the index has no such file, IndexCorruptError when it
        changed or is gone.
        """
        existing = self.extra_files.get(name)
        if existing is None:
            raise ItemNotFoundError(f"this index has no {name}")
        try:
            storage.check_file(existing.path, {"sha256": existing.sha256, "bytes": None})
        except FileNotFoundError:
            raise IndexCorruptError(
                f"{existing.path}: listed in the manifest but missing"
            ) from None
        return existing.path

    # ------------------------------------------------------------------ items

    def label_of(self, row: int) -> int | None:
        return self._label(self._version, row)

    def label_name_of(self, row: int) -> str | None:
        return self._label_name(self._version, row)

    @staticmethod
    def _label(version: _Version, row: int) -> int | None:
        label = int(version.labels[row])
        return None if label < 0 else label

    def _label_name(self, version: _Version, row: int) -> str | None:
        label = self._label(version, row)
        if label is None or label >= len(self.label_names):
            return None
        return self.label_names[label]

    def row_of(self, item_id: str) -> int:
        """Catalog position of ``item_id``; raises ItemNotFoundError."""
        return self._version.row_of(item_id)

    def item_pixels(self, item_id: str) -> np.ndarray:
        """The catalog item's (28, 28) uint8 image as the model saw it (ItemNotFoundError for
        an unknown id, or an index without item images)."""
        self._check_item_images()
        version = self._version
        return np.array(version.image_array()[version.row_of(item_id)])

    def item_png(self, item_id: str) -> bytes:
        """The catalog item as PNG bytes."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.item_pixels(item_id), mode="L").save(buffer, format="PNG")
        return buffer.getvalue()


def _check_new_ids(version: _Version, ids: list[str]) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if not item_id:
            raise ConfigError("item ids must be non-empty strings")
        if item_id in seen:
            raise DuplicateIdError(f"id {item_id!r} is given twice")
        seen.add(item_id)
        try:
            version.row_of(item_id)
        except ItemNotFoundError:
            continue
        raise DuplicateIdError(f"id {item_id!r} is already in the index")


def _check_items(
    directory: Path,
    vectors: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
) -> None:
    """The loaded arrays have the dtypes and shapes the rest of simsearch relies on."""
    problems = []
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        problems.append(f"vectors {vectors.dtype} {vectors.shape}")
    if ids.ndim != 1 or ids.dtype.kind != "U":
        problems.append(f"ids {ids.dtype} {ids.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        problems.append(f"labels {labels.dtype} {labels.shape}")
    if sources.ndim != 1 or sources.dtype.kind != "U":
        problems.append(f"sources {sources.dtype} {sources.shape}")
    if problems:
        raise IndexCorruptError(f"{directory}: unexpected data ({'; '.join(problems)})")


def _read_checked(path: Path, entry: dict[str, Any], verify: bool) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexCorruptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if verify and (
        len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]
    ):
        raise IndexCorruptError(f"{path}: sha256 does not match the manifest (file changed?)")
    return data


def _digest_on_disk(directory: Path) -> str | None:
    """The checksum of the manifest now on disk (None: none there, or unreadable)."""
    import json

    try:
        manifest = json.loads((directory / storage.MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    return storage.manifest_digest(manifest) if isinstance(manifest, dict) else None


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _exact(
    catalog: Floats, queries: Floats, k: int, candidates: Rows | None
) -> tuple[Floats, Rows]:
    """Exact top-k by inner product over ``catalog`` rows (or only the ``candidates`` rows):
    scores (n, k) float32 best first, ties by row; rows (n, k) int64."""
    vectors = catalog if candidates is None else catalog[candidates]
    k = min(k, len(vectors))
    scores = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), EXACT_BATCH):
        sims = queries[start : start + EXACT_BATCH] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(vectors) else None
        if top is None:
            top = np.broadcast_to(np.arange(len(vectors)), sims.shape)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_sims), axis=1)
        scores[start : start + len(sims)] = np.take_along_axis(top_sims, order, axis=1)
        picked = np.take_along_axis(top, order, axis=1)
        rows[start : start + len(sims)] = picked if candidates is None else candidates[picked]
    return scores, rows


def _joined(answers: Iterator[tuple[Rows, Floats, Rows]]) -> tuple[Floats, Rows]:
    """The (scores, rows) of a batch's chunks, in the batch's order."""
    parts = list(answers)
    if len(parts) == 1:
        return parts[0][1], parts[0][2]
    positions = np.concatenate([p[0] for p in parts])
    scores = np.empty((len(positions), *parts[0][1].shape[1:]), parts[0][1].dtype)
    rows = np.empty((len(positions), *parts[0][2].shape[1:]), parts[0][2].dtype)
    scores[positions] = np.concatenate([p[1] for p in parts])
    rows[positions] = np.concatenate([p[2] for p in parts])
    return scores, rows


def _by_locality(version: _Version, vectors: Floats) -> Rows:
    """An order of a batch's queries that puts those near the same part of the catalog next to
    each other: searched in turn, they visit the same graph nodes or lists, which then stay in
    the CPU's caches (a third less search time for the 10,000 Fashion-MNIST test images than in
    their own order, HNSW and IVF alike). An HNSW walk or an IVF scan for one query does not
    depend on the others, so only speed changes. A flat index reads the whole catalog for
    every query whatever the order: its batches keep theirs.
    """
    if version.vindex.kind == "flat":
        return np.arange(len(vectors))
    catalog = version.vectors
    # A spread of the catalog, contiguous (numpy multiplies strided arrays without BLAS).
    anchors = np.ascontiguousarray(catalog[:: max(1, len(catalog) // LOCALITY_ANCHORS)]).T
    nearest = np.concatenate(
        [
            np.argmax(vectors[start : start + LOCALITY_BLOCK] @ anchors, axis=1)
            for start in range(0, len(vectors), LOCALITY_BLOCK)
        ]
    )
    return np.argsort(nearest, kind="stable")


def _fuse(
    scores: Floats, rows: Rows, owner: NDArray[np.intp], n: int
) -> tuple[Floats, Rows, NDArray[np.intp]]:
    """The (m, k) answers of m views -> (n, k) of the n images they belong to (``owner``, one
    per view): the union of an image's views' rows, each once with its best similarity, best
    first (ties by row), -1 / NaN past the last; and the view each image's first row came from
    (-1: none). Exact for the best k: a row among an image's best k is among the k of the view
    that scores it best."""
    m, k = rows.shape
    out_scores = np.full((n, k), np.nan, np.float32)
    out_rows = np.full((n, k), -1, np.int64)
    best = np.full(n, -1, np.intp)
    if m == n and (owner == np.arange(n)).all():  # one view each: nothing to merge
        has = rows[:, 0] >= 0 if k else np.zeros(n, bool)
        best[has] = np.flatnonzero(has)
        return scores, rows, best
    r, s = rows.ravel(), scores.ravel()
    o, v = np.repeat(owner, k), np.repeat(np.arange(m), k)
    ok = r >= 0
    r, s, o, v = r[ok], s[ok], o[ok], v[ok]
    order = np.lexsort((-s, r, o))  # each (image, row) with its best similarity first
    r, s, o, v = r[order], s[order], o[order], v[order]
    first = np.ones(len(r), bool)
    first[1:] = (o[1:] != o[:-1]) | (r[1:] != r[:-1])
    r, s, o, v = r[first], s[first], o[first], v[first]
    order = np.lexsort((r, -s, o))  # per image, best first, ties by row
    r, s, o, v = r[order], s[order], o[order], v[order]
    starts = np.searchsorted(o, o, side="left")
    rank = np.arange(len(o)) - starts
    keep = rank < k
    out_scores[o[keep], rank[keep]] = s[keep]
    out_rows[o[keep], rank[keep]] = r[keep]
    top = rank == 0
    best[o[top]] = v[top]
    return out_scores, out_rows, best


def _ids_of(version: _Version, rows: np.ndarray) -> NDArray[np.str_]:
    ids = version.ids.astype(str)
    out = np.where(rows >= 0, ids[np.maximum(rows, 0)] if len(ids) else "", "")
    return np.asarray(out, dtype=ids.dtype if len(ids) else str)


def _check_number(value: Any, low: float, high: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ConfigError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")
    number = float(value)
    if not low <= number <= high:
        raise ConfigError(f"{name} must lie between {low:g} and {high:g}, got {number:g}")
    return number


def _check_vectors(vectors: np.ndarray, dim: int) -> Floats:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] != dim or array.dtype.kind not in "fiu":
        raise ConfigError(f"vectors must be a (n, {dim}) float array, got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1 or k > MAX_K:
        raise ConfigError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return int(k)


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
        raise ConfigError(f"pixels must have shape (n, 28, 28), got {pixels.shape}")
    if pixels.dtype != np.uint8:
        raise ConfigError(f"pixels must be uint8, got {pixels.dtype}")
    return pixels


def _to_views(images: Sequence[ImageInput] | np.ndarray) -> tuple[np.ndarray, NDArray[np.intp]]:
    """Query images -> their views (m, 28, 28) uint8 and the image each belongs to (m,): one
    view per array item, several for a photo (see images.preprocess_views)."""
    if isinstance(images, np.ndarray):
        pixels = _to_pixels(images)
        return pixels, np.arange(len(pixels))
    views = [preprocess_views(image).pixels for image in images]
    if not views:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.intp)
    owner = np.repeat(np.arange(len(views)), [len(v) for v in views])
    return np.concatenate(views), owner


def _to_pixels(images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
    if isinstance(images, np.ndarray) and images.ndim >= 2 and images.shape[1:] in IMAGE_SHAPES:
        return preprocess_array(images.reshape(len(images), 28, 28))
    if isinstance(images, np.ndarray | str | bytes | os.PathLike):
        raise ConfigError(
            "pass a sequence of images or an (n, 28, 28) array, not one image (shape "
            f"{getattr(images, 'shape', None)})"
        )
    pixels = [preprocess(image) for image in images]
    if not pixels:
        return np.zeros((0, 28, 28), np.uint8)
    return np.stack(pixels)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _save_items(path: Path, ids: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(ids, dtype=str),
            labels=np.asarray(labels, dtype=np.int16),
            sources=np.asarray(sources, dtype=str),
        )
