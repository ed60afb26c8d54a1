"""Embeddings as Parquet: the hand-off between simsearch and the rest of a pipeline.

One row per catalog item::

    id          string            the catalog id
    label       int16, nullable   class id (null: no label)
    label_name  string, nullable
    source      string, nullable  the image file, for items from a folder
    vector      fixed_size_list<float32>[d]   the L2-normalised embedding

The file's metadata (key ``simsearch``) records the embedding dimension, the metric and the
sha256 of the encoder that made the vectors, so an index built from them can refuse vectors of
another model. ``simsearch export`` writes one file; ``simsearch embed`` a folder of such files
(a dataset). pyarrow is imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import ConfigError, MissingDependencyError

METADATA_KEY = b"simsearch"
COLUMNS = ("id", "label", "label_name", "source", "vector")


@dataclass
class Embeddings:
    """Catalog items with their vectors: ids (n,) str, labels (n,) int16 (-1 = none),
    label_names (the class names labels index), sources (n,) str ("" = none), vectors (n, d)
    float32, and the metadata the file carried."""

    ids: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    sources: np.ndarray
    vectors: np.ndarray
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingDependencyError("Parquet needs pyarrow: pip install pyarrow") from None
    return pa


def schema(dim: int, metadata: dict[str, Any] | None = None) -> Any:
    """The Arrow schema of an embeddings file with ``dim``-d vectors."""
    pa = _pyarrow()
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int16()),
        pa.field("label_name", pa.string()),
        pa.field("source", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ]
    meta = {METADATA_KEY: json.dumps({"dim": dim, "metric": "cosine", **(metadata or {})})}
    return pa.schema(fields, metadata=meta)


def table(
    ids: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
    sources: Sequence[str] | np.ndarray,
    vectors: np.ndarray,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """An Arrow table of items (labels -1 and sources "" become nulls)."""
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
    return pa.Table.from_arrays(columns, schema=schema(dim, metadata))


def write(path: Path, items: Any) -> None:
    """Write an Arrow table (see :func:`table`) as one Parquet file."""
    import pyarrow.parquet as pq

    pq.write_table(items, path, compression="zstd")


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
    ids = np.asarray([i for t in tables for i in t.column("id").to_pylist()], dtype=str)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{files[0]}: the same id appears twice")
    labels = np.concatenate([_labels(t, label_names) for t in tables]).astype(np.int16)
    sources = np.asarray([s or "" for t in tables for s in _column(t, "source")], dtype=str)
    return Embeddings(ids, labels, label_names, sources, vectors, metadata)


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
    out = np.full(t.num_rows, -1, np.int16)
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
