"""Build an index: load the catalog, train the model (or reuse one), embed, index, save."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import storage
from simsearch.data import CLASS_NAMES, load_items, load_split
from simsearch.encoders import load_encoder, normalize
from simsearch.errors import (
    ConfigError,
    IndexCorruptError,
    IndexExistsError,
    MissingDependencyError,
)
from simsearch.progress import Reporter
from simsearch.search_index import SearchIndex
from simsearch.training import TrainConfig, TrainedModel, train
from simsearch.vector_index import AUTO, choose_type, default_params

EMBED_BATCH = 4096
SPLITS = ("train", "test", "all")
FASHION_MNIST = "fashion-mnist"


@dataclass
class BuildConfig:
    """What ``simsearch build-index`` builds."""

    catalog: str = FASHION_MNIST  # or a folder of images
    split: str = "train"
    limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    index_type: str = AUTO  # or flat, hnsw, ivf; auto chooses by catalog size
    index_params: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    labels_from_folders: bool = False
    model_from: str | None = None  # reuse the encoder of this index instead of training

    @property
    def is_folder(self) -> bool:
        return self.catalog != FASHION_MNIST

    def validate(self) -> None:
        if self.is_folder and not Path(self.catalog).is_dir():
            raise ConfigError(
                f"--catalog must be fashion-mnist or an existing folder, got {self.catalog!r}"
            )
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        choose_type(self.index_type, 0)  # refuses an unknown type before any work
        self.train.validate()


@dataclass
class Catalog:
    pixels: np.ndarray  # (n, 28, 28) uint8
    ids: list[str]
    labels: np.ndarray  # (n,) int16, -1 = no label
    sources: list[str]  # "" = none
    label_names: list[str]
    skipped: list[dict[str, str]]
    description: dict[str, Any]


def versions() -> dict[str, str | None]:
    """Versions of what made the index (read from package metadata: no heavy imports)."""

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "simsearch": version("simsearch"),
        "tensorflow": version("tensorflow", "tensorflow-cpu"),
        "keras": version("keras"),
        "faiss": version("faiss-cpu", "faiss"),
        "onnxruntime": version("onnxruntime"),
        "numpy": version("numpy"),
    }


def load_catalog(config: BuildConfig, reporter: Reporter) -> Catalog:
    """The catalog to index: a Fashion-MNIST split or every image under a folder."""
    if config.is_folder:
        from simsearch.catalog import image_files, load_folder

        root = Path(config.catalog)
        files = image_files(root)[: config.limit]
        folder = load_folder(root, config.labels_from_folders, reporter, paths=files)
        if not folder.ids:
            raise ConfigError(f"no usable images under {root}")
        return Catalog(
            folder.pixels,
            folder.ids,
            folder.labels,
            folder.sources,
            folder.label_names,
            folder.skipped,
            {"source": "folder", "path": str(root.resolve()), "limit": config.limit},
        )
    images, labels, ids = load_items(config.split, config.limit, config.data_dir)
    return Catalog(
        images,
        ids,
        labels,
        [""] * len(ids),
        list(CLASS_NAMES),
        [],
        {"source": FASHION_MNIST, "split": config.split, "limit": config.limit},
    )


def training_images(config: BuildConfig, catalog: Catalog) -> np.ndarray:
    """Fashion-MNIST models learn from the train split, never from test items (the queries)."""
    if config.is_folder or config.split == "train":
        return catalog.pixels
    images = load_split("train", config.data_dir).images
    return images if config.limit is None else images[: config.limit]


def training_labels(config: BuildConfig, catalog: Catalog) -> np.ndarray:
    """The class ids of ``training_images`` (-1 = unknown), for ``--use-labels``."""
    if config.is_folder or config.split == "train":
        return catalog.labels
    labels = load_split("train", config.data_dir).labels.astype(np.int16)
    return labels if config.limit is None else labels[: config.limit]


def embed_catalog(encoder_file: Path, images: np.ndarray, reporter: Reporter) -> np.ndarray:
    """Embed (n, 28, 28) uint8 images in batches -> (n, d) float32 unit vectors."""
    encoder = load_encoder(encoder_file)
    out = np.empty((len(images), encoder.dim), np.float32)
    with reporter.task("embedding", total=len(images), unit="images") as advance:
        for start in range(0, len(images), EMBED_BATCH):
            batch = images[start : start + EMBED_BATCH]
            out[start : start + len(batch)] = normalize(encoder.encode(batch))
            advance(len(batch))
    return out


def reuse_model(source: SearchIndex, workdir: Path) -> TrainedModel:
    """Copy the (checksum-verified) model files of a loaded index into ``workdir``."""
    encoder_file = workdir / source.encoder_file.name
    encoder_file.write_bytes(source.encoder.data)  # verified when the index loaded
    extra = []  # every model file training wrote next to the encoder (SearchIndex.extra_files)
    for name, existing in source.extra_files.items():
        target = workdir / name
        try:
            shutil.copyfile(existing.path, target)
        except OSError as exc:
            raise IndexCorruptError(f"{existing.path}: cannot read ({exc.strerror})") from None
        if storage.sha256_file(target) != existing.sha256:
            raise IndexCorruptError(
                f"{existing.path}: sha256 does not match the manifest (file changed?)"
            )
        extra.append(target)
    model = dict(source.manifest["model"])
    fields = {k: model[k] for k in TrainConfig.__dataclass_fields__ if k in model}
    return TrainedModel(
        TrainConfig(**fields),
        encoder_file,
        extra,
        {},
        int(model.get("epochs_run", 0)),
        float(model.get("train_seconds", 0.0)),
    )


def draw_training_curve(trained: TrainedModel, workdir: Path) -> list[Path]:
    """``training_curve.png`` of the loss history into ``workdir`` (none for PCA, which has no
    history, or without matplotlib)."""
    if not trained.history:
        return []
    from simsearch.figures import loss_label, training_curve

    try:
        path = training_curve(
            trained.history, workdir / "training_curve.png", loss_label(trained.config.loss)
        )
    except MissingDependencyError:
        return []
    return [path]


def build_index(
    config: BuildConfig,
    index_dir: Path,
    force: bool = False,
    reporter: Reporter | None = None,
    tensorboard_dir: Path | None = None,
) -> SearchIndex:
    """Train, embed and index the catalog, then save it to ``index_dir`` atomically.

    Raises IndexExistsError (before any work) when an index exists and ``force`` is False.
    """
    config.validate()
    reporter = reporter or Reporter(quiet=True)
    if storage.has_index(index_dir) and not force:
        raise IndexExistsError(f"an index already exists at {index_dir}; use --force to replace it")
    storage.check_target(index_dir, allow_foreign=force)
    created = not index_dir.exists()
    try:
        # The writer lock is held for the whole build: an `add` meanwhile waits and then
        # applies to the new index instead of being overwritten by it.
        with storage.locked(index_dir, create=True, on_wait=reporter.waiting_for_writer(index_dir)):
            return _build(config, index_dir, force, reporter, tensorboard_dir)
    except BaseException:
        if created:
            _remove_if_only_lock(index_dir)
        raise


def _remove_if_only_lock(directory: Path) -> None:
    """A build that failed leaves no folder it created behind."""
    try:
        if {p.name for p in directory.iterdir()} <= {storage.LOCK}:
            (directory / storage.LOCK).unlink(missing_ok=True)
            directory.rmdir()
    except OSError:
        pass


def _build(
    config: BuildConfig,
    index_dir: Path,
    force: bool,
    reporter: Reporter,
    tensorboard_dir: Path | None,
) -> SearchIndex:
    if storage.has_index(index_dir) and not force:  # made by a writer we waited for
        raise IndexExistsError(f"an index already exists at {index_dir}; use --force to replace it")
    # The model's index first: a broken or foreign one fails before any catalog is read.
    source = SearchIndex.load(Path(config.model_from)) if config.model_from else None
    catalog = load_catalog(config, reporter)
    with tempfile.TemporaryDirectory(prefix="simsearch-build-") as tmp:
        workdir = Path(tmp)
        if source is not None:
            reporter.message(f"catalog: {len(catalog.ids):,} items; model from {config.model_from}")
            trained = reuse_model(source, workdir)
        else:
            train_images = training_images(config, catalog)
            reporter.message(
                f"catalog: {len(catalog.ids):,} items; training {config.train.model} "
                f"(code {config.train.code_size}) on {len(train_images):,} images"
            )
            labels = training_labels(config, catalog) if config.train.use_labels else None
            trained = train(train_images, config.train, workdir, reporter, tensorboard_dir, labels)
            trained.extra_files += draw_training_curve(trained, workdir)
        vectors = embed_catalog(trained.encoder_file, catalog.pixels, reporter)
        index_type = choose_type(config.index_type, len(catalog.ids))
        index_params = {**default_params(index_type, len(catalog.ids)), **config.index_params}
        model = trained.describe() | {"encoder_sha256": storage.sha256_file(trained.encoder_file)}
        if config.model_from:
            model["reused_from"] = str(Path(config.model_from).resolve())
        manifest: dict[str, Any] = {
            "format_version": storage.FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "catalog": catalog.description
            | {"label_names": catalog.label_names, "skipped": catalog.skipped},
            "model": model,
            "preprocessing": {
                "input": "28x28 uint8 grayscale, light object on a dark background",
                "pipeline": "simsearch.images.preprocess (Fashion-MNIST framing, Xiao et al. 2017)",
                "pixel_scaling": "inside the encoder: x / 255",
            },
            "embedding_dim": int(vectors.shape[1]),
            "metric": "cosine",
            "normalized": True,
            "count": len(catalog.ids),
            "index": {"type": index_type, "params": index_params},
            "build": asdict(config),
        }
        reporter.message(f"indexing {len(catalog.ids):,} vectors ({index_type}) ...")
        index = SearchIndex(
            encoder=load_encoder(trained.encoder_file),
            encoder_file=trained.encoder_file,
            vectors=vectors,
            ids=np.asarray(catalog.ids, dtype=str),
            labels=catalog.labels,
            sources=np.asarray(catalog.sources, dtype=str),
            images=catalog.pixels,
            manifest=manifest,
            extra_files={path.name: path for path in trained.extra_files},
        )
        index.save(index_dir, force=force)
    skipped = f", skipped {len(catalog.skipped)} unreadable" if catalog.skipped else ""
    reporter.message(f"saved {len(index):,} items to {index_dir}{skipped}")
    return index


# ---------------------------------------------------------------------- from embeddings


def build_from_embeddings(
    source: Path,
    index_dir: Path,
    *,
    model_from: Path | None = None,
    shards: int = 1,
    index_type: str = AUTO,
    index_params: dict[str, Any] | None = None,
    ray: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> SearchIndex:
    """An index over embeddings that ``simsearch embed`` (a folder) or ``simsearch export``
    (one Parquet file, with ``model_from``: the index whose encoder made it) wrote; no
    training, no images read. The encoder comes with the embeddings, checked, so the index
    queries like any other.

    ``shards`` > 1 splits the items into that many consecutive shards (``index-NNN.faiss``)
    searched in parallel and merged; IVF shards share one quantizer trained once on a sample.
    With ``ray`` (a cluster address or ``auto``) the shards are built in parallel Ray tasks.
    Saved atomically like ``build_index``; on any error nothing is written.
    """
    from simsearch.embeddings import open_embeddings

    reporter = reporter or Reporter(quiet=True)
    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    choose_type(index_type, 0)  # an unknown type fails before any work
    if storage.has_index(index_dir) and not force:
        raise IndexExistsError(f"an index already exists at {index_dir}; use --force to replace it")
    storage.check_target(index_dir, allow_foreign=force)
    if ray is not None:
        from simsearch import distributed

        distributed.connect(ray)  # an unreachable cluster fails before anything is read
    loaded = open_embeddings(source, model_from)
    items = loaded.embeddings
    if shards > len(items):
        raise ConfigError(f"--shards {shards} is more than the {len(items):,} items")
    created = not index_dir.exists()
    try:
        with storage.locked(index_dir, create=True, on_wait=reporter.waiting_for_writer(index_dir)):
            if storage.has_index(index_dir) and not force:
                raise IndexExistsError(
                    f"an index already exists at {index_dir}; use --force to replace it"
                )
            kind = choose_type(index_type, len(items))
            params = {**default_params(kind, len(items)), **(index_params or {})}
            where = f" on the Ray cluster at {ray}" if ray is not None else ""
            reporter.message(
                f"indexing {len(items):,} vectors from {source} ({kind}, {shards} shard(s){where})"
            )
            searcher = _searcher(items.vectors, kind, params, shards, ray)
            with tempfile.TemporaryDirectory(prefix="simsearch-build-") as tmp:
                encoder_file = Path(tmp) / loaded.encoder_name
                encoder_file.write_bytes(loaded.encoder_data)
                has_images = items.images is not None
                catalog = {
                    k: v for k, v in loaded.catalog.items() if k in ("source", "split", "path")
                }
                if "limit" in loaded.catalog:
                    catalog["limit"] = loaded.catalog["limit"]
                manifest: dict[str, Any] = {
                    "format_version": storage.FORMAT_VERSION,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "versions": versions(),
                    "catalog": catalog
                    | {
                        "label_names": items.label_names,
                        "skipped": loaded.skipped,
                        "embeddings": str(source.resolve()),
                        "item_images": has_images,
                    },
                    "model": loaded.model
                    | {
                        "encoder_file": loaded.encoder_name,
                        "encoder_sha256": storage.sha256_file(encoder_file),
                    },
                    "preprocessing": loaded.preprocessing,
                    "embedding_dim": int(items.vectors.shape[1]),
                    "metric": "cosine",
                    "normalized": True,
                    "count": len(items),
                    "index": {"type": kind, "params": params},
                    "build": {
                        "from_embeddings": str(source.resolve()),
                        "shards": shards,
                        "index_type": index_type,
                        "index_params": dict(index_params or {}),
                        "ray": ray,
                        "labels_from_folders": bool(loaded.catalog.get("labels_from_folders")),
                    },
                }
                index = SearchIndex(
                    encoder=load_encoder(encoder_file, loaded.encoder_data),
                    encoder_file=encoder_file,
                    vectors=items.vectors,
                    ids=items.ids,
                    labels=items.labels,
                    sources=items.sources,
                    # The index format keeps the model inputs; without them, zeros stand in
                    # and the manifest says item images are unavailable.
                    images=items.images if has_images else np.zeros((len(items), 28, 28), np.uint8),
                    manifest=manifest,
                    searcher=searcher,
                )
                index.save(index_dir, force=force)
    except BaseException:
        if created:
            _remove_if_only_lock(index_dir)
        raise
    reporter.message(f"saved {len(index):,} items to {index_dir}")
    return index


def _searcher(
    vectors: np.ndarray, kind: str, params: dict[str, Any], shards: int, ray: str | None
) -> Any:
    """One index over ``vectors``, or ``shards`` consecutive ones (on the Ray cluster at
    ``ray``: one task per shard)."""
    import functools

    from simsearch import vector_index

    parallel = None
    if ray is not None:
        from simsearch import distributed

        parallel = functools.partial(distributed.build_shards, ray, kind=kind, params=params)
    sizes = vector_index.shard_sizes(len(vectors), shards)
    sharded = vector_index.build_shards(vectors, kind, params, sizes, parallel)
    return sharded.shards[0] if shards == 1 else sharded
