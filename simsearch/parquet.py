"""Embeddings as Parquet: the hand-off between simsearch and the rest of a pipeline.

One row per catalog item::

    id          string            the catalog id
    label       int16, nullable   class id (null: no label)
    label_name  string, nullable
    source      string, nullable  the image file, for items from a folder
    vector      fixed_size_list<float32>[d]   the L2-normalised embedding
    image       fixed_size_binary[784], optional: the 28x28 uint8 model input (row-major)

The file's metadata (key ``simsearch``) records the embedding dimension, the metric and the
sha256 of the encoder that made the vectors, so an index built from them can refuse vectors of
another model. ``simsearch export`` writes one file; ``simsearch embed`` a folder of such files
(a dataset, see :mod:`simsearch.embeddings`). pyarrow is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch.errors import ConfigError, MissingDependencyError, OutputError

if TYPE_CHECKING:
    from simsearch.search_index import SearchIndex

METADATA_KEY = b"simsearch"
COLUMNS = ("id", "label", "label_name", "source", "vector")  # and, optionally, "image"
IMAGE_BYTES = 28 * 28
EXPORT_ROWS = 65_536  # rows per row group written by export (bounds its memory)
UNIT_TOLERANCE = 1e-3  # a vector's length may differ from 1 by this much (float rounding)


@dataclass
class Embeddings:
    """Catalog items with their vectors: ids (n,) str, labels (n,) int16 (-1 = none),
    label_names (the class names labels index), sources (n,) str ("" = none), vectors (n, d)
    float32, images (n, 28, 28) uint8 model inputs (None when the files have no image column),
    and the metadata the file carried."""

    ids: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    sources: np.ndarray
    vectors: np.ndarray
    metadata: dict[str, Any]
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingDependencyError("Parquet needs pyarrow: pip install pyarrow") from None
    return pa


def schema(dim: int, metadata: dict[str, Any] | None = None, images: bool = False) -> Any:
    """The Arrow schema of an embeddings file with ``dim``-d vectors (and the image column)."""
    pa = _pyarrow()
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int16()),
        pa.field("label_name", pa.string()),
        pa.field("source", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ]
    if images:
        fields.append(pa.field("image", pa.binary(IMAGE_BYTES), nullable=False))
    meta = {METADATA_KEY: json.dumps({"dim": dim, "metric": "cosine", **(metadata or {})})}
    return pa.schema(fields, metadata=meta)


def table(
    ids: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
    sources: Sequence[str] | np.ndarray,
    vectors: np.ndarray,
    metadata: dict[str, Any] | None = None,
    images: np.ndarray | None = None,
) -> Any:
    """An Arrow table of items (labels -1 and sources "" become nulls); ``images``: (n, 28, 28)
    uint8 model inputs for the image column."""
    pa = _pyarrow()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    names = [label_names[i] if 0 <= i < len(label_names) else None for i in labels.tolist()]
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns = [
        pa.array([str(i) for i in ids], pa.string()),
        pa.array(labels, pa.int16(), mask=labels < 0),
        pa.array(names, pa.string()),
        pa.array([str(s) or None for s in sources], pa.string()),
        pa.FixedSizeListArray.from_arrays(flat, dim),
    ]
    if images is not None:
        columns.append(image_array(images))
    return pa.Table.from_arrays(columns, schema=schema(dim, metadata, images is not None))


def image_array(images: np.ndarray) -> Any:
    """(n, 28, 28) uint8 -> an Arrow fixed_size_binary[784] array (zero copy)."""
    pa = _pyarrow()
    pixels = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, IMAGE_BYTES)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(IMAGE_BYTES), len(pixels), [None, pa.py_buffer(pixels)]
    )


def pixels_of(column: Any) -> np.ndarray:
    """An Arrow fixed_size_binary[784] column (array or chunked) -> (n, 28, 28) uint8."""
    pa = _pyarrow()
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.type != pa.binary(IMAGE_BYTES) or array.null_count:
        raise ConfigError(f"image column must hold {IMAGE_BYTES} bytes per row, not {array.type}")
    data = array.buffers()[1]
    if data is None:
        return np.zeros((0, 28, 28), np.uint8)
    flat = np.frombuffer(data, np.uint8, len(array) * IMAGE_BYTES, array.offset * IMAGE_BYTES)
    return flat.reshape(len(array), 28, 28)


def write(path: Path, items: Any) -> None:
    """Write an Arrow table (see :func:`table`) as one Parquet file."""
    import pyarrow.parquet as pq

    pq.write_table(items, path, compression="zstd")


def encode(items: Any) -> bytes:
    """An Arrow table as the bytes of one Parquet file (what :func:`write` would write)."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(items, sink, compression="zstd")
    return bytes(sink.getvalue())


def index_metadata(index: SearchIndex) -> dict[str, Any]:
    """What an embeddings file records about the index whose encoder made its vectors: the
    encoder's sha256 and file name, the model, the label names, the catalog."""
    model = dict(index.manifest.get("model", {}))
    catalog = index.manifest.get("catalog", {})
    return {
        "encoder_sha256": hashlib.sha256(index.encoder.data).hexdigest(),
        "encoder_file": index.encoder_file.name,
        "model": model,
        "label_names": list(index.label_names),
        "catalog": {k: catalog[k] for k in ("source", "split", "limit", "path") if k in catalog},
        "preprocessing": index.manifest.get("preprocessing", {}),
    }


def export(index: SearchIndex, path: Path, images: bool = False) -> int:
    """Write every item of ``index`` (id, label, label_name, source, vector; with ``images``
    the model inputs too) as one Parquet file, atomically: a temporary file next to it is
    renamed over ``path`` once complete. Returns the number of rows.

    The file's metadata holds the encoder's sha256, the model, dimension, label names and count.
    Raises OutputError when the file cannot be written (nothing is left behind).
    """
    import pyarrow.parquet as pq

    _pyarrow()
    metadata = index_metadata(index) | {"count": len(index)}
    vectors, ids, labels, sources = index.vectors, index.ids, index.labels, index.sources
    pixels = index.images if images else None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with pq.ParquetWriter(
            tmp, schema(index.dim, metadata, images), compression="zstd"
        ) as writer:
            for start in range(0, max(len(index), 1), EXPORT_ROWS):
                part = slice(start, start + EXPORT_ROWS)
                writer.write_table(
                    table(
                        ids[part],
                        labels[part],
                        index.label_names,
                        sources[part],
                        vectors[part],
                        metadata,
                        None if pixels is None else pixels[part],
                    )
                )
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(index)


def read(paths: Path | Iterable[Path], dim: int | None = None) -> Embeddings:
    """Read one embeddings file, or several (a dataset, in the order given).

    Raises ConfigError for a file that is not such a file (wrong schema, vectors that are not
    float lists of one length, a dimension other than ``dim``), naming the file.
    """
    pa = _pyarrow()
    import pyarrow.parquet as pq

    files = [paths] if isinstance(paths, Path) else list(paths)
    if not files:
        raise ConfigError("no Parquet files to read")
    tables: list[Any] = []
    metadata: dict[str, Any] = {}
    for path in files:
        try:
            part = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"{path}: not a readable Parquet file ({_first(exc)})") from None
        missing = [c for c in ("id", "vector") if c not in part.column_names]
        if missing:
            raise ConfigError(
                f"{path}: no column {', '.join(missing)} (needs {', '.join(COLUMNS)})"
            )
        vector_type = part.schema.field("vector").type
        if not (pa.types.is_fixed_size_list(vector_type) or pa.types.is_list(vector_type)) or not (
            pa.types.is_floating(vector_type.value_type)
        ):
            raise ConfigError(f"{path}: column vector must hold lists of floats, not {vector_type}")
        raw = (part.schema.metadata or {}).get(METADATA_KEY)
        if raw and not metadata:
            try:
                metadata = json.loads(raw)
            except ValueError:
                raise ConfigError(f"{path}: unreadable simsearch metadata") from None
        tables.append(part)
    return _embeddings(tables, metadata, files, dim)


def _embeddings(
    tables: list[Any], metadata: dict[str, Any], files: list[Path], dim: int | None
) -> Embeddings:
    label_names: list[str] = list(metadata.get("label_names") or [])
    parts = [_vectors(t, path) for t, path in zip(tables, files, strict=True)]
    widths = {v.shape[1] for v in parts if len(v)}
    if len(widths) > 1:
        raise ConfigError(f"vectors of different dimensions across files: {sorted(widths)}")
    found = widths.pop() if widths else int(metadata.get("dim") or dim or 1)
    if dim is not None and found != dim:
        raise ConfigError(f"{files[0]}: {found}-d vectors, expected {dim}-d")
    vectors = np.concatenate([v.reshape(-1, found) for v in parts])
    if not np.isfinite(vectors).all():
        raise ConfigError(f"{files[0]}: vectors with NaN or infinity")
    # The index is a cosine index over unit vectors (what embed and export write): another
    # length would rank that item above identical ones.
    lengths = np.linalg.norm(vectors.astype(np.float64), axis=1)
    off = np.flatnonzero(np.abs(lengths - 1.0) > UNIT_TOLERANCE)
    if len(off):
        raise ConfigError(
            f"{files[0]}: vectors must be L2-normalised (length 1); row {off[0]} has length "
            f"{lengths[off[0]]:.4g} ({len(off)} such rows)"
        )
    raw_ids = [i for t in tables for i in t.column("id").to_pylist()]
    if any(i is None or i == "" for i in raw_ids):
        raise ConfigError(f"{files[0]}: rows without an id")
    ids = np.asarray(raw_ids, dtype=str)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{files[0]}: the same id appears twice")
    labels = np.concatenate([_labels(t, label_names) for t in tables])
    # With names, every label must have one; without, a label must fit the index's int16.
    end = len(label_names) or int(np.iinfo(np.int16).max) + 1
    bad = np.flatnonzero((labels < -1) | (labels >= end))
    if len(bad):
        have = f"the file names {len(label_names)} labels" if label_names else f"-1 to {end - 1}"
        raise ConfigError(f"{files[0]}: label {labels[bad[0]]} of row {bad[0]} ({have})")
    labels = labels.astype(np.int16)
    sources = np.asarray([s or "" for t in tables for s in _column(t, "source")], dtype=str)
    images = None
    if all("image" in t.column_names for t in tables):
        parts_images = []
        for t, path in zip(tables, files, strict=True):
            try:
                parts_images.append(pixels_of(t.column("image")))
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        images = np.concatenate(parts_images)
    return Embeddings(ids, labels, label_names, sources, vectors, metadata, images)


def _vectors(t: Any, path: Path) -> np.ndarray:
    """The vector column as (n, d) float32; ConfigError when the lists differ in length."""
    import pyarrow.compute as pc

    column = t.column("vector").combine_chunks()
    if column.null_count:
        raise ConfigError(f"{path}: rows without a vector")
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    if len(lengths) != 1 or lengths[0] < 1:
        raise ConfigError(f"{path}: vectors of different lengths ({', '.join(map(str, lengths))})")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(column), int(lengths[0]))


def _column(t: Any, name: str) -> list[Any]:
    return t.column(name).to_pylist() if name in t.column_names else [None] * t.num_rows


def _labels(t: Any, label_names: list[str]) -> np.ndarray:
    """Label ids; where a file has only names, ids are assigned in order of first sight."""
    ids = _column(t, "label")
    names = _column(t, "label_name")
    out = np.full(t.num_rows, -1, np.int64)
    for i, (label, name) in enumerate(zip(ids, names, strict=True)):
        if name is not None:
            if name not in label_names:
                label_names.append(name)
            out[i] = label_names.index(name) if label is None else label
        elif label is not None:
            out[i] = label
    return out


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
