"""Tiny synthetic Fashion-MNIST look-alikes: deterministic, class-dependent shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simsearch.data import SPLIT_FILES, write_idx


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 light shapes on black, labels (n,) uint8 in 0..9 (shape = class)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i, label in enumerate(labels):
        height = 8 + 2 * int(label % 5) + int(rng.integers(0, 3))
        width = 6 + 4 * int(label // 5) + int(rng.integers(0, 3)) + int(label % 3)
        top = (28 - height) // 2 + int(rng.integers(-1, 2))
        left = (28 - width) // 2 + int(rng.integers(-1, 2))
        shape = (yy >= top) & (yy < top + height) & (xx >= left) & (xx < left + width)
        if label % 2:  # odd classes are hollow
            inner = (
                (yy >= top + 2)
                & (yy < top + height - 2)
                & (xx >= left + 2)
                & (xx < left + width - 2)
            )
            shape &= ~inner
        brightness = 150 + int(rng.integers(0, 100))
        noise = rng.integers(0, 30, size=(28, 28))
        images[i] = np.clip(shape * brightness + noise * shape, 0, 255).astype(np.uint8)
    return images, labels


def write_dataset(directory: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """Write the four IDX .gz files of a fake dataset into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = make_images(n, seed)
        image_file, label_file = SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
    return directory
