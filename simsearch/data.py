"""Fashion-MNIST from its four original IDX files.

Lookup order (first hit wins):
1. an explicit ``data_dir`` (``--data-dir``) or the environment variable ``SIMSEARCH_DATA_DIR``
2. the Keras cache ``~/.keras/datasets/fashion-mnist/``
3. ``/usr/share/datasets/fashion-mnist/`` (Debian/Ubuntu package ``dataset-fashion-mnist``)
4. a download through ``keras.datasets.fashion_mnist.load_data()`` when the network allows it
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from simsearch.errors import DatasetCorruptError, DatasetNotFoundError

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

Split = Literal["train", "test"]
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
KERAS_CACHE = Path("~/.keras/datasets/fashion-mnist")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetSplit:
    """One split of the dataset: images (n, 28, 28) uint8, labels (n,) uint8, ids (n,) str."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [item_id(self.name, i) for i in range(len(self.images))]


def item_id(split: str, index: int) -> str:
    """Stable catalog id, e.g. ``fashion-mnist/train/00042``."""
    return f"fashion-mnist/{split}/{index:05d}"


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The local directories searched, in order."""
    dirs: list[Path] = []
    explicit = data_dir if data_dir is not None else os.environ.get("SIMSEARCH_DATA_DIR")
    if explicit:
        dirs.append(Path(explicit).expanduser())
    dirs.append(KERAS_CACHE.expanduser())
    dirs.append(DEBIAN_DIR)
    return dirs


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first candidate directory holding all four IDX files, or None."""
    names = [name for pair in SPLIT_FILES.values() for name in pair]
    explicit = data_dir if data_dir is not None else os.environ.get("SIMSEARCH_DATA_DIR")
    for directory in candidate_dirs(data_dir):
        if all((directory / name).is_file() for name in names):
            return directory
        if explicit and directory == Path(explicit).expanduser():
            # An explicit directory that lacks files is a user mistake: say so, do not fall back.
            missing = [name for name in names if not (directory / name).is_file()]
            raise DatasetNotFoundError(
                f"--data-dir/SIMSEARCH_DATA_DIR {directory} lacks {', '.join(missing)}"
            )
    return None


def not_found_message() -> str:
    return (
        "Fashion-MNIST not found. Give --data-dir DIR (or SIMSEARCH_DATA_DIR) holding the four "
        "IDX .gz files, put them in ~/.keras/datasets/fashion-mnist/, install the Debian package "
        "(apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/), "
        "or allow network access for keras.datasets.fashion_mnist.load_data()"
    )


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Read one gzipped (or plain) IDX file into a uint8 array of shape (n, *item_shape).

    Raises DatasetCorruptError on a wrong magic number, wrong dimensions or wrong length.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetCorruptError(f"{path}: cannot read ({exc})") from None
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetCorruptError(f"{path}: file too short for an IDX header ({len(raw)} bytes)")
    (found_magic,) = struct.unpack(">I", raw[:4])
    if found_magic != magic:
        raise DatasetCorruptError(
            f"{path}: bad magic number 0x{found_magic:08x}, expected 0x{magic:08x}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    if tuple(dims[1:]) != item_shape:
        raise DatasetCorruptError(f"{path}: item shape {dims[1:]}, expected {item_shape}")
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetCorruptError(
            f"{path}: {len(raw)} bytes, expected {expected} for {dims[0]} items (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def load_split(split: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetSplit:
    """Load one split ("train" or "test") as images (n, 28, 28) uint8 and labels (n,) uint8."""
    if split not in SPLIT_FILES:
        raise DatasetNotFoundError(f"unknown split {split!r}; choose train or test")
    directory = find_data_dir(data_dir)
    if directory is None:
        return _download_split(split)
    image_file, label_file = SPLIT_FILES[split]
    images = read_idx(directory / image_file, IMAGES_MAGIC, (28, 28))
    labels = read_idx(directory / label_file, LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DatasetCorruptError(
            f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split"
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DatasetCorruptError(f"{directory / label_file}: label {labels.max()} out of range")
    return DatasetSplit(split, images, labels)


def load_items(
    split: str, limit: int | None = None, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The catalog items of a split ("train", "test" or "all": both), the first ``limit`` of
    each: images (n, 28, 28) uint8, labels (n,) int16 and their ids (:func:`item_id`)."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    for name in ["train", "test"] if split == "all" else [split]:
        part = load_split(name, data_dir)
        count = len(part.images) if limit is None else min(limit, len(part.images))
        images.append(part.images[:count])
        labels.append(part.labels[:count].astype(np.int16))
        ids.extend(item_id(name, i) for i in range(count))
    return np.concatenate(images), np.concatenate(labels), ids


def _download_split(split: str) -> DatasetSplit:
    """Last resort: Keras' own downloader (needs the network and TensorFlow)."""
    try:
        from keras.datasets import fashion_mnist

        (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    except Exception:  # no network, no keras: all we can do is list the options
        raise DatasetNotFoundError(not_found_message()) from None
    if split == "train":
        return DatasetSplit("train", np.asarray(x_train, np.uint8), np.asarray(y_train, np.uint8))
    return DatasetSplit("test", np.asarray(x_test, np.uint8), np.asarray(y_test, np.uint8))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (used by tests and scripts to make small data)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
