"""Embeddings directories: a catalog embedded with an index's encoder, as Parquet parts.

``simsearch embed`` writes one, ``simsearch build-index --from-embeddings`` reads it::

    EMB_DIR/
        manifest.json        model (encoder sha256, ...), dimension, count, label names, catalog,
                             skipped files with their errors, every part with its sha256
        encoder.onnx         the encoder that made the vectors: the folder is self-contained
        part-00000.parquet   id, label, label_name, source, vector[, image] (simsearch.parquet)

The work is one callable over a batch of items, :class:`EmbedParts`: read and preprocess the
images, encode, normalise (:func:`embed_items`), write the batch as one part. It runs in this
process or as a pool of Ray actors (:mod:`simsearch.distributed`). A part is named after the
catalog rows it holds, so a batch done twice (a retry after a worker died) writes the same file
twice, never two files; at the end every row must be in exactly one part (or skipped) before the
staging folder is renamed to EMB_DIR. Nothing is left behind by a run that fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import parquet
from simsearch.build import FASHION_MNIST, SPLITS
from simsearch.errors import (
    ConfigError,
    IncompatibleIndexError,
    IndexCorruptError,
    IndexExistsError,
    InvalidImageError,
)
from simsearch.progress import Reporter

FORMAT = "simsearch-embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Items per part file (and per task of the pool): small enough to spread a 20,000-item catalog
# over a few workers, large enough that a billion items make about 10^5 files.
BATCH = 8192
PARQUET_MAGIC = b"PAR1"


@dataclass
class EmbedConfig:
    """What ``simsearch embed`` embeds: a catalog as ``build-index`` reads it."""

    catalog: str = FASHION_MNIST  # or a folder of images, or a list file (text or Parquet)
    split: str = "train"
    limit: int | None = None
    data_dir: str | None = None
    labels_from_folders: bool = False
    batch_size: int = BATCH
    images: bool = True  # keep each item's 28x28 model input (784 bytes) in the parts

    def validate(self) -> None:
        catalog_kind(self.catalog)
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


def catalog_kind(catalog: str) -> str:
    """``fashion-mnist``, ``folder`` or ``list`` (a text or Parquet file of image paths)."""
    if catalog == FASHION_MNIST:
        return FASHION_MNIST
    path = Path(catalog)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "list"
    raise ConfigError(
        f"--catalog must be fashion-mnist, a folder of images or a list of image paths "
        f"(text or Parquet), got {catalog!r}"
    )


@dataclass
class Items:
    """A catalog to embed, in catalog order, as Arrow tables of at most ``batch_size`` rows:
    ``row`` (position in the catalog), ``id``, ``label`` (-1: none), ``source``, and either
    ``pixels`` (28x28 uint8 model inputs, fixed_size_binary[784]) or ``path`` (a file to read)."""

    batches: list[Any]
    count: int
    label_names: list[str]
    description: dict[str, Any]


def catalog_items(config: EmbedConfig) -> Items:
    """The items of ``config.catalog``; raises ConfigError for an empty catalog."""
    kind = catalog_kind(config.catalog)
    if kind == FASHION_MNIST:
        return _fashion_mnist_items(config)
    if kind == "folder":
        return _folder_items(config)
    return _list_items(config)


def _fashion_mnist_items(config: EmbedConfig) -> Items:
    from simsearch.data import CLASS_NAMES, load_items

    pixels, labels, ids = load_items(config.split, config.limit, config.data_dir)
    description = {"source": FASHION_MNIST, "split": config.split, "limit": config.limit}
    columns = {"id": ids, "label": labels, "source": [""] * len(ids)}
    return _batched(columns, pixels, None, config, list(CLASS_NAMES), description)


def _folder_items(config: EmbedConfig) -> Items:
    from simsearch.catalog import folder_label, folder_label_names, image_files

    # Absolute paths: the workers of a cluster read them, whatever their working directory.
    root = Path(config.catalog).resolve()
    files = image_files(root)[: config.limit]
    if not files:
        raise ConfigError(f"no image files under {config.catalog}")
    label_names = folder_label_names(root, files) if config.labels_from_folders else []
    sources = [str(f) for f in files]
    columns = {
        "id": [f.relative_to(root).as_posix() for f in files],
        "label": np.asarray([folder_label(root, f, label_names) for f in files], np.int16),
        "source": sources,
    }
    description = {"source": "folder", "path": str(root), "limit": config.limit}
    return _batched(columns, None, sources, config, label_names, description)


def _list_items(config: EmbedConfig) -> Items:
    """A list of image paths: a text file (one per line; blank lines and ``#`` comments
    skipped) or a Parquet file with a ``path`` column (and optional ``id``, ``label_name``).
    Ids are the paths as written (or the ``id`` column); relative paths are read from the
    current folder."""
    path = Path(config.catalog)
    with open(path, "rb") as f:
        is_parquet = f.read(4) == PARQUET_MAGIC
    names: list[str | None]
    if is_parquet:
        paths, ids, names = _parquet_list(path)
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text list of image paths (not UTF-8)") from None
        paths = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
        ids = [Path(os.path.normpath(p)).as_posix() for p in paths]
        names = [None] * len(paths)
    paths, ids, names = paths[: config.limit], ids[: config.limit], names[: config.limit]
    if not paths:
        raise ConfigError(f"{path}: lists no image paths")
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ConfigError(f"{path}: id {item!r} appears twice")
        seen.add(item)
    label_names = sorted({n for n in names if n is not None})
    sources = [str(Path(p).resolve()) for p in paths]
    columns = {
        "id": ids,
        "label": np.asarray([-1 if n is None else label_names.index(n) for n in names], np.int16),
        "source": sources,
    }
    description = {"source": "list", "path": str(path.resolve()), "limit": config.limit}
    return _batched(columns, None, sources, config, label_names, description)


def _parquet_list(path: Path) -> tuple[list[str], list[str], list[str | None]]:
    pa = parquet._pyarrow()
    import pyarrow.parquet as pq

    try:
        listing = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: not a readable Parquet file ({parquet._first(exc)})") from None
    if "path" not in listing.column_names:
        raise ConfigError(
            f"{path}: a Parquet list needs a column 'path' (and may have id, label_name)"
        )
    paths = [str(p) if p is not None else "" for p in listing.column("path").to_pylist()]
    if not all(paths):
        raise ConfigError(f"{path}: rows without a path")
    ids = (
        [str(i) for i in listing.column("id").to_pylist()]
        if "id" in listing.column_names
        else [Path(os.path.normpath(p)).as_posix() for p in paths]
    )
    names: list[str | None] = (
        [None if n is None else str(n) for n in listing.column("label_name").to_pylist()]
        if "label_name" in listing.column_names
        else [None] * len(paths)
    )
    return paths, ids, names


def _batched(
    columns: dict[str, Any],
    pixels: np.ndarray | None,
    paths: list[str] | None,
    config: EmbedConfig,
    label_names: list[str],
    description: dict[str, Any],
) -> Items:
    if not len(columns["id"]):
        raise ConfigError(f"the catalog {config.catalog} is empty")
    return items_from(columns, pixels, paths, config.batch_size, label_names, description)


def items_from(
    columns: dict[str, Any],
    pixels: np.ndarray | None,
    paths: list[str] | None,
    batch_size: int,
    label_names: list[str],
    description: dict[str, Any],
) -> Items:
    """:class:`Items` from columns ``id``, ``label`` (-1: none), ``source`` and either the
    model inputs ``pixels`` (n, 28, 28) uint8 or image ``paths`` to read."""
    pa = parquet._pyarrow()
    count = len(columns["id"])
    batches = []
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        arrays = {
            "row": pa.array(np.arange(start, min(start + batch_size, count)), pa.int64()),
            "id": pa.array(columns["id"][part], pa.string()),
            "label": pa.array(columns["label"][part], pa.int16()),
            "source": pa.array(columns["source"][part], pa.string()),
        }
        if pixels is not None:
            arrays["pixels"] = parquet.image_array(pixels[part])
        else:
            arrays["path"] = pa.array(paths[part] if paths else [], pa.string())
        batches.append(pa.table(arrays))
    return Items(batches, count, label_names, description | {"count": count})


# ---------------------------------------------------------------------- the work


@dataclass
class EmbeddedBatch:
    """A batch of items embedded: ``keep`` (n,) bool marks the items that could be used, in
    order; ``vectors`` (m, d) float32 unit rows and ``pixels`` (m, 28, 28) uint8 are theirs."""

    vectors: np.ndarray
    pixels: np.ndarray
    keep: np.ndarray
    skipped: list[dict[str, str]]


def embed_items(encoder: Any, items: Any) -> EmbeddedBatch:
    """Items (an Arrow table of :class:`Items` columns) -> their unit vectors.

    Paths are read and preprocessed exactly as a query image is; an unreadable one is skipped
    and listed as ``build-index --catalog`` lists it. Then encode and L2-normalise.
    """
    from simsearch.encoders import normalize

    pixels, keep, skipped = read_items(items)
    if len(pixels):
        vectors = normalize(encoder.encode(pixels))
    else:
        vectors = np.zeros((0, encoder.dim), np.float32)
    return EmbeddedBatch(vectors, pixels, keep, skipped)


def read_items(items: Any) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """The model inputs of a batch: (pixels (m, 28, 28) uint8, keep (n,) bool, skipped)."""
    from simsearch.catalog import skipped_file
    from simsearch.images import preprocess

    if "pixels" in items.column_names:
        return parquet.pixels_of(items.column("pixels")), np.ones(items.num_rows, bool), []
    keep = np.ones(items.num_rows, bool)
    pixels, skipped = [], []
    for i, path in enumerate(items.column("path").to_pylist()):
        try:
            pixels.append(preprocess(path))
        except InvalidImageError as exc:
            keep[i] = False
            skipped.append(skipped_file(path, exc))
    stacked = np.stack(pixels) if pixels else np.zeros((0, 28, 28), np.uint8)
    return stacked, keep, skipped


class EmbedParts:
    """Embeds a batch of items and writes it as one part file into ``folder``.

    The work of ``simsearch embed``, the same in this process and in every Ray actor
    (``Dataset.map_batches`` builds one per actor and calls it with an Arrow table of
    :class:`Items` columns). The encoder is read from ``folder`` and checked against its sha256;
    each instance holds its own session. Returns a one-row table describing the part: ``file``
    ("" when every item was skipped), ``first`` and ``rows`` (the batch: catalog rows
    [first, first + rows)), ``count`` (items written), ``sha256``, ``bytes``, ``skipped`` (JSON),
    ``cpu_seconds`` (of this process, all its threads: the work's cost whatever else runs).
    """

    def __init__(
        self,
        folder: str,
        encoder_name: str,
        encoder_sha256: str,
        metadata: str,
        images: bool = True,
        threads: int | None = None,
    ) -> None:
        from simsearch.encoders import load_encoder

        self.folder = Path(folder)
        path = self.folder / encoder_name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IndexCorruptError(
                f"{path}: cannot read the encoder ({exc.strerror}); is the output folder on "
                "storage every node shares?"
            ) from None
        if hashlib.sha256(data).hexdigest() != encoder_sha256:
            raise IndexCorruptError(f"{path}: sha256 does not match the encoder being used")
        self.encoder = load_encoder(path, data, threads)
        self.metadata = json.loads(metadata)
        self.images = images

    def __call__(self, items: Any) -> Any:
        pa = parquet._pyarrow()
        cpu = time.process_time()
        rows = items.column("row").to_numpy()
        first = int(rows[0]) if len(rows) else 0
        if not np.array_equal(rows, np.arange(first, first + len(rows))):
            raise ConfigError("a batch of items must be a consecutive range of catalog rows")
        batch = embed_items(self.encoder, items)
        name, digest, size = "", "", 0
        if len(batch.vectors):
            keep = batch.keep
            part = parquet.table(
                np.asarray(items.column("id").to_pylist(), dtype=object)[keep],
                items.column("label").to_numpy()[keep],
                self.metadata.get("label_names") or [],
                np.asarray(items.column("source").to_pylist(), dtype=object)[keep],
                batch.vectors,
                self.metadata,
                batch.pixels if self.images else None,
            )
            data = parquet.encode(part)
            name = part_name(first, len(rows))
            _write_atomically(self.folder / name, data)
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
        # Small (well under Ray's 100 KB for results kept by the caller): a node that dies
        # after a batch is done does not take its result with it.
        return pa.table(
            {
                "file": [name],
                "first": pa.array([first], pa.int64()),
                "rows": pa.array([len(rows)], pa.int64()),
                "count": pa.array([len(batch.vectors)], pa.int64()),
                "sha256": [digest],
                "bytes": pa.array([size], pa.int64()),
                "skipped": [json.dumps(batch.skipped)],
                "cpu_seconds": [time.process_time() - cpu],
            }
        )


def part_name(first: int, rows: int) -> str:
    """The staging name of the part of catalog rows [first, first + rows): a batch done twice
    (a retry) writes the same file again."""
    return f"part-r{first:012d}-n{rows}.parquet"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- a run


@dataclass
class EmbedResult:
    directory: Path
    count: int
    skipped: list[dict[str, str]]
    parts: int
    seconds: float  # wall time of the run
    cpu_seconds: float  # CPU time of the batches' work, summed over the workers
    manifest: dict[str, Any] = field(default_factory=dict)


def embed(
    config: EmbedConfig,
    model_from: Path,
    out: Path,
    ray: str | None = None,
    actors: int | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> EmbedResult:
    """Embed ``config.catalog`` with the (checksum-verified) encoder of the index at
    ``model_from`` into the embeddings folder ``out``; on the Ray cluster at ``ray``
    (an address or ``auto``) with ``actors`` encoder actors, else in this process.

    ``out`` is written atomically (a staging folder beside it, renamed at the end). Raises
    IndexExistsError when ``out`` exists and ``force`` is False (before any work), ConfigError
    for an empty catalog or one without a usable image, ClusterError when the cluster cannot be
    reached or the job fails; in every case nothing is written.
    """
    from simsearch.search_index import SearchIndex

    config.validate()
    check_output(out, force)
    source = SearchIndex.load(model_from)  # the encoder's checksum is verified here
    if ray is not None:
        from simsearch import distributed

        distributed.connect(ray)  # an unreachable cluster fails before the catalog is read
    items = catalog_items(config)
    extra = {"labels_from_folders": config.labels_from_folders}
    return write_embeddings(items, source, out, config.images, ray, actors, force, reporter, extra)


def write_embeddings(
    items: Items,
    source: Any,
    out: Path,
    images: bool = True,
    ray: str | None = None,
    actors: int | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    catalog_extra: dict[str, Any] | None = None,
) -> EmbedResult:
    """Embed ``items`` with the encoder of the loaded index ``source`` into ``out`` (see
    :func:`embed`, which reads a catalog into items and calls this)."""
    reporter = reporter or Reporter(quiet=True)
    check_output(out, force)
    metadata = parquet.index_metadata(source) | {
        "label_names": items.label_names,
        "catalog": items.description,
    }
    encoder_name = source.encoder_file.name
    encoder_sha256 = metadata["encoder_sha256"]
    batch_size = max(batch.num_rows for batch in items.batches)
    started = time.perf_counter()
    created = _make_parent(out)
    staging = out.parent / f".{out.name}.staging-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        _write_atomically(staging / encoder_name, source.encoder.data)
        kwargs = {
            "folder": str(staging.resolve()),
            "encoder_name": encoder_name,
            "encoder_sha256": encoder_sha256,
            "metadata": json.dumps(metadata),
            "images": images,
        }
        where = f"on the Ray cluster at {ray}" if ray is not None else "in this process"
        reporter.message(f"embedding {items.count:,} items {where} ...")
        if ray is None:
            summaries = _run_here(items, kwargs, reporter)
        else:
            from simsearch import distributed

            kwargs["threads"] = distributed.ACTOR_THREADS
            summaries = distributed.run_actor_pool(
                ray, items.batches, EmbedParts, kwargs, actors, progress=not reporter.quiet
            )
        parts, skipped, cpu_seconds = _collect(staging, summaries, items.count)
        count = sum(entry["rows"] for entry in parts.values())
        if count == 0:
            raise ConfigError(f"no usable images in {items.description.get('path', 'the catalog')}")
        seconds = time.perf_counter() - started
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            "model": metadata["model"] | {"encoder_sha256": encoder_sha256},
            "model_from": str(Path(source.directory).resolve()) if source.directory else None,
            "preprocessing": metadata["preprocessing"],
            "embedding_dim": source.dim,
            "metric": "cosine",
            "normalized": True,
            "count": count,
            "label_names": items.label_names,
            "catalog": items.description | (catalog_extra or {}),
            "skipped": skipped,
            "images": images,
            "encoder": {
                "file": encoder_name,
                "sha256": encoder_sha256,
                "bytes": len(source.encoder.data),
            },
            "parts": parts,
            "run": {
                "ray": ray,
                "batch_size": batch_size,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu_seconds, 2),
            },
        }
        _write_atomically(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        _replace(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            _rmdir_if_empty(folder)
        raise
    if skipped:
        reporter.message(f"skipped {len(skipped)} unreadable file(s) (listed in the manifest)")
    return EmbedResult(out, count, skipped, len(parts), seconds, cpu_seconds, manifest)


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` without ``force``; with it, replace only an embeddings
    folder (never another folder or a file)."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise IndexExistsError(f"{out} already exists; use --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise IndexExistsError(f"{out} exists and is not an embeddings folder; choose another")
    if any(out.iterdir()) and not _is_embeddings_dir(out):
        raise IndexExistsError(
            f"{out} is not empty and holds no embeddings (no {MANIFEST} of simsearch embed); "
            "choose another folder (--force replaces only an embeddings folder)"
        )


def _is_embeddings_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _make_parent(out: Path) -> list[Path]:
    """Create the folders above ``out`` that are missing; return them (deepest first)."""
    missing = []
    parent = out.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    return missing


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _replace(out: Path, staging: Path) -> None:
    """Rename the complete staging folder to ``out`` (replacing an old one)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)


def _run_here(items: Items, kwargs: dict[str, Any], reporter: Reporter) -> list[dict[str, Any]]:
    work = EmbedParts(**kwargs)
    summaries = []
    with reporter.task("embedding", total=items.count, unit="images") as advance:
        for batch in items.batches:
            summaries.extend(work(batch).to_pylist())
            advance(batch.num_rows)
    return summaries


def _collect(
    staging: Path, summaries: list[dict[str, Any]], count: int
) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]], float]:
    """Check that every catalog row was embedded (or skipped) exactly once, drop files of
    attempts that did not finish (a worker that died), and give the parts their final names
    in catalog order. Returns (parts: name -> sha256, bytes, rows; skipped files; the CPU
    seconds of the batches kept)."""
    seen = np.zeros(count, bool)
    kept: dict[tuple[int, int], dict[str, Any]] = {}
    for summary in sorted(summaries, key=lambda s: (s["first"], s["rows"])):
        span = (summary["first"], summary["rows"])
        if span in kept:  # the same batch reported twice (a retry): the same file
            continue
        rows = slice(span[0], span[0] + span[1])
        if seen[rows].any():
            raise IndexCorruptError(
                f"{int(seen[rows].sum())} items were embedded by two different batches; "
                "the run is not used"
            )
        seen[rows] = True
        kept[span] = summary
    if not seen.all():
        raise IndexCorruptError(
            f"{int((~seen).sum()):,} of {count:,} items were not embedded; the run is not used"
        )
    files = {summary["file"] for summary in kept.values()}
    for path in staging.iterdir():  # leftovers of attempts whose result never arrived
        if path.name.startswith(".") or (path.suffix == ".parquet" and path.name not in files):
            path.unlink()
    parts: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for summary in kept.values():
        skipped.extend(json.loads(summary["skipped"]))
        if not summary["file"]:
            continue
        path = staging / summary["file"]
        if not path.is_file() or path.stat().st_size != summary["bytes"]:
            raise IndexCorruptError(
                f"{summary['file']}: written by a worker but not found whole in the output "
                "folder; is it on storage every node shares?"
            )
        name = f"part-{len(parts):05d}.parquet"
        os.rename(path, staging / name)
        parts[name] = {
            "sha256": summary["sha256"],
            "bytes": summary["bytes"],
            "rows": summary["count"],
        }
    return parts, skipped, sum(summary["cpu_seconds"] for summary in kept.values())


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("simsearch", "onnxruntime", "pyarrow", "ray"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# ---------------------------------------------------------------------- reading


@dataclass
class LoadedEmbeddings:
    """Embeddings with the encoder that made them (checked) and what an index manifest needs."""

    embeddings: parquet.Embeddings
    encoder_name: str
    encoder_data: bytes
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    catalog: dict[str, Any]
    skipped: list[dict[str, str]]
    source: Path


def open_embeddings(path: Path, model_from: Path | None = None) -> LoadedEmbeddings:
    """An embeddings folder (checked against its manifest: every part's sha256, the encoder's)
    or one Parquet file (``simsearch export``), whose encoder is the one of the index at
    ``model_from``: its sha256 must be the file's ``encoder_sha256``. With a folder,
    ``model_from`` is optional and must then have the same encoder.

    Raises ConfigError (not embeddings, a wrong schema), IndexCorruptError (a part missing or
    changed) or IncompatibleIndexError (another model, another dimension).
    """
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(model_from) if model_from is not None else None
    if path.is_dir():
        loaded = _open_folder(path)
    elif path.is_file():
        if index is None:
            raise ConfigError(
                f"{path} is one Parquet file: give --model-from INDEX_DIR, the index whose "
                "encoder made its vectors"
            )
        loaded = _open_file(path, index)
    else:
        raise ConfigError(f"--from-embeddings {path}: no such folder or file")
    if index is not None:
        expected = hashlib.sha256(loaded.encoder_data).hexdigest()
        if hashlib.sha256(index.encoder.data).hexdigest() != expected:
            raise IncompatibleIndexError(
                f"{path}: made by another model than the index at {model_from} (encoder sha256 "
                f"{expected[:12]} vs {hashlib.sha256(index.encoder.data).hexdigest()[:12]})"
            )
    return loaded


def _open_folder(path: Path) -> LoadedEmbeddings:
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no {MANIFEST}; not a folder written by simsearch embed"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IndexCorruptError(f"{manifest_path}: unreadable ({parquet._first(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{manifest_path}: not the manifest of a simsearch embed folder")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IncompatibleIndexError(
            f"{manifest_path}: embeddings format {manifest.get('format_version')!r} is not "
            f"supported (this simsearch reads {FORMAT_VERSION})"
        )
    try:
        encoder = manifest["encoder"]
        parts = manifest["parts"]
        dim = int(manifest["embedding_dim"])
        encoder_name = str(encoder["file"])
        names = [str(name) for name in parts]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise IndexCorruptError(f"{manifest_path}: missing or malformed fields") from None
    for name in [encoder_name, *names]:
        if Path(name).name != name or name.startswith("."):
            raise IndexCorruptError(f"{manifest_path}: unsafe file name {name!r}")
    encoder_data = _checked(path / encoder_name, encoder)
    if hashlib.sha256(encoder_data).hexdigest() != manifest["model"].get("encoder_sha256"):
        raise IndexCorruptError(f"{manifest_path}: the encoder is not the one the model names")
    for name in names:
        _checked(path / name, parts[name], keep=False)
    embeddings = parquet.read([path / name for name in names], dim)
    if len(embeddings) != manifest.get("count"):
        raise IndexCorruptError(
            f"{manifest_path}: {len(embeddings):,} items in the parts, the manifest says "
            f"{manifest.get('count')}"
        )
    _check_made_by(path, embeddings, encoder_data)
    catalog = dict(manifest.get("catalog") or {})
    return LoadedEmbeddings(
        embeddings,
        encoder_name,
        encoder_data,
        dict(manifest["model"]),
        dict(manifest.get("preprocessing") or {}),
        catalog,
        list(manifest.get("skipped") or []),
        path,
    )


def _open_file(path: Path, index: Any) -> LoadedEmbeddings:
    embeddings = parquet.read(path)
    if not len(embeddings):
        raise ConfigError(f"{path}: holds no items")
    made_with = embeddings.metadata.get("encoder_sha256")
    if not made_with:
        raise IncompatibleIndexError(
            f"{path}: no encoder_sha256 in its metadata; cannot tell which model made the vectors"
        )
    _check_made_by(path, embeddings, index.encoder.data)
    if embeddings.vectors.shape[1] != index.dim:
        raise IncompatibleIndexError(
            f"{path}: {embeddings.vectors.shape[1]}-d vectors, the index's encoder makes "
            f"{index.dim}-d ones"
        )
    catalog = dict(embeddings.metadata.get("catalog") or {})
    return LoadedEmbeddings(
        embeddings,
        index.encoder_file.name,
        index.encoder.data,
        dict(embeddings.metadata.get("model") or index.manifest.get("model", {})),
        dict(embeddings.metadata.get("preprocessing") or {}),
        catalog,
        [],
        path,
    )


def _check_made_by(path: Path, embeddings: parquet.Embeddings, encoder_data: bytes) -> None:
    made_with = embeddings.metadata.get("encoder_sha256")
    actual = hashlib.sha256(encoder_data).hexdigest()
    if made_with != actual:
        raise IncompatibleIndexError(
            f"{path}: vectors made by another model (encoder sha256 {str(made_with)[:12]}, "
            f"this encoder's is {actual[:12]})"
        )


def _checked(path: Path, entry: dict[str, Any], keep: bool = True) -> bytes:
    """The file's bytes (when ``keep``) once its size and sha256 match ``entry``."""
    try:
        size = path.stat().st_size
    except OSError:
        raise IndexCorruptError(f"{path}: listed in {MANIFEST} but missing") from None
    if size != entry.get("bytes"):
        raise IndexCorruptError(f"{path}: {size} bytes, {MANIFEST} says {entry.get('bytes')}")
    digest = hashlib.sha256()
    data = bytearray()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if keep:
                data += block
    if digest.hexdigest() != entry.get("sha256"):
        raise IndexCorruptError(f"{path}: sha256 does not match {MANIFEST} (file changed?)")
    return bytes(data)
