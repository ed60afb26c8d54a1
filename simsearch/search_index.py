"""``SearchIndex``: one object owns an index - encoder, FAISS index, item metadata, manifest."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import storage, vector_index
from simsearch.encoders import Encoder, load_encoder, normalize
from simsearch.errors import (
    ConfigError,
    DuplicateIdError,
    IncompatibleIndexError,
    IndexCorruptError,
    IndexExistsError,
    ItemNotFoundError,
)
from simsearch.hit import Hit
from simsearch.images import ImageInput, preprocess, preprocess_array

MAX_K = 10_000
# The files every index has (the encoder aside); anything else in the manifest is an extra.
DATA_FILES = ("vectors.npy", "items.npz", "images.npy", "index.faiss", "faiss_rows.npy")
# HNSW: removed items kept as tombstones up to this share of the graph, then it is rebuilt.
MAX_TOMBSTONE_FRACTION = 0.1


def default_index_dir() -> Path:
    """``SIMSEARCH_INDEX_DIR`` when set, else ``indexes/fashion-mnist``."""
    return Path(os.environ.get("SIMSEARCH_INDEX_DIR") or "indexes/fashion-mnist")


class SearchIndex:
    """A searchable catalog of images.

    Build one with :meth:`create` (see ``simsearch.build``), persist it with :meth:`save`, open it
    with :meth:`load`. Vectors are L2-normalised codes; similarity is their inner product (cosine).
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
        images: np.ndarray | None,
        manifest: dict[str, Any],
        extra_files: dict[str, Path] | None = None,
        faiss_index: Any = None,
        directory: Path | None = None,
        faiss_rows: np.ndarray | None = None,
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
        self.vectors = vectors
        self.ids = ids
        self.labels = labels
        self.sources = sources
        self._images = images
        self._images_unverified = False  # set by load(): checksum images.npy on first use
        self.manifest = manifest
        self.extra_files = dict(extra_files or {})
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
        index_conf = manifest["index"]
        self.faiss_index = (
            faiss_index
            if faiss_index is not None
            else vector_index.build(vectors, index_conf["type"], index_conf.get("params"))
        )
        # HNSW after removals: FAISS position -> catalog row, -1 for a removed item (tombstone).
        self.faiss_rows = faiss_rows
        positions = n if faiss_rows is None else len(faiss_rows)
        if self.faiss_index.ntotal != positions or self.faiss_index.d != self.dim:
            raise IndexCorruptError(
                f"FAISS index holds {self.faiss_index.ntotal} x {self.faiss_index.d}, "
                f"expected {positions} x {self.dim}"
            )
        if faiss_rows is not None and not np.array_equal(
            np.sort(faiss_rows[faiss_rows >= 0]), np.arange(n)
        ):
            raise IndexCorruptError("faiss_rows.npy does not map the index onto its items")
        self._tombstones: vector_index.Tombstones | None = None
        self._row_of: dict[str, int] | None = None
        # (id, label, label name, source) per row, filled as rows are returned by queries.
        self._hit_fields: dict[int, tuple[str, int | None, str | None, str | None]] = {}

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load(cls, directory: str | os.PathLike[str], verify: bool = True) -> SearchIndex:
        """Open the index at ``directory``; checks the manifest, every file's sha256 and shapes.

        ``images.npy`` (memory-mapped, not needed to search) is checksummed on its first use.

        Raises IndexNotFoundError, IndexCorruptError or IncompatibleIndexError.
        """
        directory = Path(directory)
        manifest = storage.read_manifest(directory)

        def path(name: str) -> Path:
            return storage.file_path(directory, manifest, name, verify=verify)

        encoder_name = manifest["model"].get("encoder_file", "encoder.onnx")
        encoder_file = path(encoder_name)
        made_with = manifest["model"].get("encoder_sha256")
        if made_with and made_with != manifest["files"][encoder_name].get("sha256"):
            raise IncompatibleIndexError(
                f"{directory}: {encoder_name} is not the model the vectors were made with "
                "(checksum differs); rebuild the index"
            )
        try:
            vectors = np.load(path("vectors.npy"), allow_pickle=False)
            with np.load(path("items.npz"), allow_pickle=False) as items:
                ids, labels, sources = items["ids"], items["labels"], items["sources"]
            # The images are memory-mapped and only needed to show items, not to search: their
            # checksum (the largest file) is checked on first use, keeping it off a cold query.
            images = np.load(
                storage.file_path(directory, manifest, "images.npy", verify=False),
                allow_pickle=False,
                mmap_mode="r",
            )
            faiss_rows = (
                np.load(path("faiss_rows.npy"), allow_pickle=False)
                if "faiss_rows.npy" in manifest["files"]
                else None
            )
        except IndexCorruptError:
            raise
        except Exception as exc:  # numpy raises ValueError/OSError/KeyError/zipfile errors
            raise IndexCorruptError(f"{directory}: unreadable data file ({exc})") from None
        if len(ids) != manifest["count"]:
            raise IndexCorruptError(
                f"{directory}: {len(ids)} items, the manifest says {manifest['count']}"
            )
        extra = {
            name: directory / entry["path"]
            for name, entry in manifest["files"].items()
            if name not in {encoder_name, *DATA_FILES}
        }
        index = cls(
            encoder=load_encoder(encoder_file),
            encoder_file=encoder_file,
            vectors=vectors,
            ids=ids,
            labels=labels,
            sources=sources,
            images=images,
            manifest=manifest,
            extra_files=extra,
            faiss_index=vector_index.load(path("index.faiss")),
            directory=directory,
            faiss_rows=faiss_rows,
        )
        index._images_unverified = verify
        return index

    def save(self, directory: str | os.PathLike[str], force: bool = False) -> None:
        """Write the index to ``directory`` atomically (see ``simsearch.storage``).

        Replacing a different existing index needs ``force=True``; re-saving the directory this
        index was loaded from does not.
        """
        directory = Path(directory)
        same = self.directory is not None and self.directory.resolve() == directory.resolve()
        if storage.has_index(directory) and not (force or same):
            raise IndexExistsError(
                f"an index already exists at {directory}; use --force to replace it"
            )
        images = np.asarray(self.images)  # verified first: a changed file is not copied on
        files: dict[str, storage.FileSource] = {
            self.encoder_file.name: self.encoder_file,
            "vectors.npy": lambda p: _save_npy(p, self.vectors),
            "items.npz": lambda p: _save_items(p, self.ids, self.labels, self.sources),
            "images.npy": lambda p: _save_npy(p, images),
            "index.faiss": lambda p: vector_index.save(self.faiss_index, p),
            **self.extra_files,
        }
        faiss_rows = self.faiss_rows
        if faiss_rows is not None:
            files["faiss_rows.npy"] = lambda p: _save_npy(p, faiss_rows)
        index_conf = {k: v for k, v in self.manifest["index"].items() if k != "tombstones"}
        if faiss_rows is not None:
            index_conf["tombstones"] = int(np.count_nonzero(faiss_rows < 0))
        manifest = {
            **self.manifest,
            "index": index_conf,
            "count": len(self),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.manifest = storage.write_index(directory, files, manifest)
        self.directory = directory
        # Later saves link from the new generation, which stays valid after garbage collection.
        written = {
            name: directory / entry["path"] for name, entry in self.manifest["files"].items()
        }
        self.encoder_file = written[self.encoder_file.name]
        # The encoder may have been opened from a temporary build folder that is about to go.
        self.encoder = load_encoder(self.encoder_file)
        self.extra_files = {name: written[name] for name in self.extra_files}

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self.ids)

    def embed(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """Images (paths, bytes, PIL images or arrays) -> (n, d) float32 L2-normalised vectors.

        A numpy array of shape (n, 28, 28) is taken as n images. Raises InvalidImageError.
        """
        return self.embed_pixels(_to_pixels(images))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed (n, 28, 28) uint8 pixels -> (n, d) float32 L2-normalised vectors."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
            raise ConfigError(f"pixels must have shape (n, 28, 28), got {pixels.shape}")
        return normalize(self.encoder.encode(pixels))

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Low level: (n, d) float32 unit vectors -> scores (n, k'), rows (n, k')."""
        if self.faiss_rows is None:
            return vector_index.search(self.faiss_index, vectors, _check_k(k))
        if self._tombstones is None:
            self._tombstones = vector_index.Tombstones(self.faiss_rows < 0, len(self.faiss_rows))
        scores, positions = vector_index.search(
            self.faiss_index, vectors, _check_k(k), self._tombstones
        )
        return scores, np.where(positions >= 0, self.faiss_rows[np.maximum(positions, 0)], -1)

    def query(self, image: ImageInput, k: int = 10) -> list[Hit]:
        """The k most similar catalog items to one image (path, bytes, PIL image or array)."""
        return self.query_batch([image], k)[0]

    def query_batch(
        self, images: Sequence[ImageInput] | np.ndarray, k: int = 10
    ) -> list[list[Hit]]:
        """One list of hits per image, in the order given. Raises InvalidImageError."""
        return self.query_pixels(_to_pixels(images), k)

    def query_pixels(self, pixels: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Like :meth:`query_batch` for already preprocessed (n, 28, 28) uint8 pixels."""
        return self._hit_lists(*self.search(self.embed_pixels(pixels), k))

    def _hit_lists(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        """FAISS-shaped (n, k) scores and rows -> one list of Hits per query."""
        # Whole-batch numpy first, then one cheap Hit per result: at 10 hits per query,
        # building Hits is a large share of a batch's time.
        similarities = np.clip(scores, -1.0, 1.0).astype(np.float64)
        return [
            self._hits(s, d, r)
            for s, d, r in zip(
                similarities.tolist(), (1.0 - similarities).tolist(), rows.tolist(), strict=True
            )
        ]

    def _hits(
        self, similarities: list[float], distances: list[float], rows: list[int]
    ) -> list[Hit]:
        hits: list[Hit] = []
        cached = self._hit_fields
        for similarity, distance, row in zip(similarities, distances, rows, strict=True):
            if row < 0:  # FAISS filler: fewer neighbours than asked for
                continue
            fields = cached.get(row)
            if fields is None:
                fields = cached[row] = (
                    str(self.ids[row]),
                    self.label_of(row),
                    self.label_name_of(row),
                    str(self.sources[row]) or None,
                )
            item_id, label, label_name, source = fields
            hits.append(
                Hit.make(len(hits) + 1, item_id, label, label_name, similarity, distance, source)
            )
        return hits

    # ------------------------------------------------------------------ changes

    def add(
        self,
        images: Sequence[ImageInput] | np.ndarray,
        ids: Sequence[str],
        labels: Sequence[int | None] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> None:
        """Embed and append items (in memory; :meth:`save` persists). No rebuild is needed.

        Raises DuplicateIdError for an id already in the index (or twice in ``ids``), and
        InvalidImageError for an unusable image; on error nothing is added.
        """
        pixels = _to_pixels(images)
        ids = [str(i) for i in ids]
        if len(ids) != len(pixels):
            raise ConfigError(f"{len(pixels)} images but {len(ids)} ids")
        self._check_new_ids(ids)
        labels = list(labels) if labels is not None else [None] * len(ids)
        sources = list(sources) if sources is not None else [None] * len(ids)
        if not (len(labels) == len(sources) == len(ids)):
            raise ConfigError("ids, labels and sources must have the same length")
        images = np.asarray(self.images)  # first: a corrupt images.npy must fail before changes
        vectors = self.embed_pixels(pixels)
        self.faiss_index.add(vectors)  # every index type here supports add
        if self.faiss_rows is not None:  # new FAISS positions follow the old ones
            new_rows = np.arange(len(self), len(self) + len(vectors), dtype=np.int64)
            self.faiss_rows = np.concatenate([self.faiss_rows, new_rows])
            self._tombstones = None
        self.vectors = np.concatenate([self.vectors, vectors])
        self.ids = np.concatenate([self.ids.astype(str), np.asarray(ids, dtype=str)])
        new_labels = np.asarray([-1 if label is None else int(label) for label in labels])
        self.labels = np.concatenate([self.labels, new_labels.astype(np.int16)])
        new_sources = np.asarray([s or "" for s in sources], dtype=str)
        self.sources = np.concatenate([self.sources.astype(str), new_sources])
        self._images = np.concatenate([images, pixels])
        self._row_of = None
        self._hit_fields = {}

    def _check_new_ids(self, ids: list[str]) -> None:
        seen: set[str] = set()
        for item_id in ids:
            if not item_id:
                raise ConfigError("item ids must be non-empty strings")
            if item_id in seen:
                raise DuplicateIdError(f"id {item_id!r} is given twice")
            seen.add(item_id)
            try:
                self.row_of(item_id)
            except ItemNotFoundError:
                continue
            raise DuplicateIdError(f"id {item_id!r} is already in the index")

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id (in memory; :meth:`save` persists).

        Flat and IVF indexes are refilled from the stored vectors (IVF keeps its trained
        quantizer). HNSW, which cannot delete in FAISS, keeps removed items as tombstones that
        searches skip, and rebuilds its graph once they pass 10% of it.
        Raises ItemNotFoundError (and removes nothing) when an id is unknown.
        """
        rows = sorted({self.row_of(str(item_id)) for item_id in ids})
        images = np.asarray(self.images)  # first: a corrupt images.npy must fail before changes
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        new_row = np.cumsum(keep) - 1  # old row -> new row (-1 once removed)
        new_row[~keep] = -1
        positions = self.faiss_rows if self.faiss_rows is not None else np.arange(len(self))
        self.vectors = np.ascontiguousarray(self.vectors[keep])
        self.ids, self.labels, self.sources = self.ids[keep], self.labels[keep], self.sources[keep]
        self._images = images[keep]
        self._row_of = None
        self._hit_fields = {}
        conf = self.manifest["index"]
        self._tombstones = None
        if conf["type"] == "hnsw" and len(self.vectors):
            mapped = np.where(positions >= 0, new_row[np.maximum(positions, 0)], -1)
            tombstones = np.count_nonzero(mapped < 0)
            if tombstones <= MAX_TOMBSTONE_FRACTION * len(mapped):
                self.faiss_rows = mapped.astype(np.int64) if tombstones else None
                return
        self.faiss_rows = None
        if conf["type"] == "ivf" and len(self.vectors):
            self.faiss_index.reset()  # keeps the trained coarse quantizer
            self.faiss_index.add(self.vectors)
        else:
            self.faiss_index = vector_index.build(self.vectors, conf["type"], conf.get("params"))

    # ------------------------------------------------------------------ items

    def label_of(self, row: int) -> int | None:
        label = int(self.labels[row])
        return None if label < 0 else label

    def label_name_of(self, row: int) -> str | None:
        label = self.label_of(row)
        if label is None or label >= len(self.label_names):
            return None
        return self.label_names[label]

    def row_of(self, item_id: str) -> int:
        """Catalog position of ``item_id``; raises ItemNotFoundError."""
        if self._row_of is None:
            self._row_of = {str(i): row for row, i in enumerate(self.ids.tolist())}
        row = self._row_of.get(item_id)
        if row is None:
            raise ItemNotFoundError(f"no item {item_id!r} in the index")
        return row

    def item_pixels(self, item_id: str) -> np.ndarray:
        """The catalog item's (28, 28) uint8 image as the model saw it."""
        return np.asarray(self.images[self.row_of(item_id)])

    def item_png(self, item_id: str) -> bytes:
        """The catalog item as PNG bytes."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.item_pixels(item_id), mode="L").save(buffer, format="PNG")
        return buffer.getvalue()

    @property
    def images(self) -> np.ndarray:
        """All catalog images (n, 28, 28) uint8 (memory-mapped when loaded)."""
        if self._images is None:
            raise ConfigError("this index has no stored images")
        if self._images_unverified and self.directory is not None:
            storage.file_path(self.directory, self.manifest, "images.npy", verify=True)
            self._images_unverified = False
        return self._images


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or k < 1 or k > MAX_K:
        raise ConfigError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return int(k)


def _to_pixels(images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[1:] == (28, 28):
        return preprocess_array(images)
    if isinstance(images, np.ndarray | str | bytes | os.PathLike):
        raise ConfigError("pass a sequence of images (or an (n, 28, 28) array), not one image")
    pixels = [preprocess(image) for image in images]
    if not pixels:
        return np.zeros((0, 28, 28), np.uint8)
    return np.stack(pixels)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _save_items(path: Path, ids: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(ids, dtype=str),
            labels=np.asarray(labels, dtype=np.int16),
            sources=np.asarray(sources, dtype=str),
        )
