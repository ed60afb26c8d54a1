"""Build an index: load the catalog, train the model, embed, index, save atomically."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from simsearch import storage
from simsearch.data import CLASS_NAMES, item_id, load_split
from simsearch.encoders import load_encoder, normalize
from simsearch.errors import ConfigError, IndexExistsError
from simsearch.progress import Reporter
from simsearch.search_index import SearchIndex
from simsearch.training import TrainConfig, train
from simsearch.vector_index import INDEX_TYPES, default_params

EMBED_BATCH = 4096
SPLITS = ("train", "test", "all")


@dataclass
class BuildConfig:
    """What ``simsearch build-index`` builds."""

    catalog: str = "fashion-mnist"
    split: str = "train"
    limit: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    index_type: str = "flat"
    index_params: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None

    def validate(self) -> None:
        if self.catalog != "fashion-mnist":
            raise ConfigError(f"unknown catalog {self.catalog!r}; only fashion-mnist is supported")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(
                f"unknown --index-type {self.index_type!r}; choose one of {', '.join(INDEX_TYPES)}"
            )
        self.train.validate()


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


def load_catalog(config: BuildConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Catalog images (n, 28, 28) uint8, labels (n,) int16 and ids for the configured split."""
    splits = ["train", "test"] if config.split == "all" else [config.split]
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    for name in splits:
        part = load_split(name, config.data_dir)
        count = len(part.images) if config.limit is None else min(config.limit, len(part.images))
        images.append(part.images[:count])
        labels.append(part.labels[:count].astype(np.int16))
        ids.extend(item_id(name, i) for i in range(count))
    return np.concatenate(images), np.concatenate(labels), ids


def _train_images(config: BuildConfig) -> np.ndarray:
    images = load_split("train", config.data_dir).images
    return images if config.limit is None else images[: config.limit]


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

    images, labels, ids = load_catalog(config)
    # The model always learns from the train split, never from test items (the query set).
    train_images = images if config.split == "train" else _train_images(config)
    reporter.message(
        f"catalog: {len(images):,} items ({config.catalog}/{config.split}); "
        f"training {config.train.model} (code {config.train.code_size}) on {len(train_images):,}"
    )

    with tempfile.TemporaryDirectory(prefix="simsearch-train-") as workdir:
        trained = train(train_images, config.train, Path(workdir), reporter, tensorboard_dir)
        vectors = embed_catalog(trained.encoder_file, images, reporter)
        index_params = {**default_params(config.index_type, len(images)), **config.index_params}
        manifest: dict[str, Any] = {
            "format_version": storage.FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "catalog": {
                "source": config.catalog,
                "split": config.split,
                "limit": config.limit,
                "label_names": list(CLASS_NAMES),
            },
            "model": trained.describe(),
            "preprocessing": {
                "input": "28x28 uint8 grayscale, light object on a dark background",
                "pipeline": "simsearch.images.preprocess (Fashion-MNIST framing, Xiao et al. 2017)",
                "pixel_scaling": "inside the encoder: x / 255",
            },
            "embedding_dim": int(vectors.shape[1]),
            "metric": "cosine",
            "normalized": True,
            "count": len(ids),
            "index": {"type": config.index_type, "params": index_params},
            "build": asdict(config) | {"train": asdict(config.train)},
        }
        reporter.message(f"indexing {len(ids):,} vectors ({config.index_type}) ...")
        index = SearchIndex(
            encoder=load_encoder(trained.encoder_file),
            encoder_file=trained.encoder_file,
            vectors=vectors,
            ids=np.asarray(ids),
            labels=labels,
            sources=np.full(len(ids), "", dtype="<U1"),
            images=images,
            manifest=manifest,
            extra_files={path.name: path for path in trained.extra_files},
        )
        index.save(index_dir, force=force)
    reporter.message(f"saved {len(index):,} items to {index_dir}")
    return index
