"""Reconstructions (Pillow; TensorFlow for an autoencoder): catalog items, the model's
reconstructions and optionally PCA's with the same code size."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from simsearch.errors import ConfigError, MissingDependencyError
from simsearch.figures.drawing import (
    BACKGROUND,
    GREY_INK,
    INK,
    MARGIN,
    PAD,
    centred,
    check_writable,
    fit_text,
    save_png,
    tile,
    typeface,
)
from simsearch.progress import Reporter

if TYPE_CHECKING:
    from simsearch.search_index import SearchIndex

# A label column, then one tile per item; class names under the originals (pixels).
RECON_TILE = 84  # a 28x28 image scaled 3x
RECON_LABEL_W = 150
RECON_TITLE_H = 30
RECON_CAPTION_H = 18
RECON_ROW_H = RECON_TILE + 2 * PAD  # 100


@dataclass(frozen=True)
class ReconstructionRow:
    """One row of a reconstruction grid: a name, (n, 28, 28) float pixels in [0, 1], its MSE."""

    name: str
    detail: str
    pixels: np.ndarray
    mse: float | None = None


@dataclass(frozen=True)
class ReconstructionResult:
    """What :func:`reconstruct` drew: the items and each row's name and MSE (per pixel, [0, 1])."""

    path: Path
    items: list[str]
    rows: list[ReconstructionRow]
    seconds: float


def reconstruct(
    index: SearchIndex,
    out: str | os.PathLike[str],
    n: int = 10,
    compare_pca: bool = False,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> ReconstructionResult:
    """Originals (top row) and the index model's reconstructions (below) into the PNG ``out``.

    Items: ``n`` random catalog items, one class after another. The model row uses the index's
    ``autoencoder.keras`` (imports TensorFlow); for a PCA index (``encoder.npz``) it is the PCA
    reconstruction ``code @ components.T + mean``. ``compare_pca`` adds PCA fitted on the catalog
    images with the same code size (skipped, with a status line, when the model is PCA already).
    Pixels are clipped to [0, 1]; each row's MSE is per pixel on that scale, over the items shown.
    Size: :func:`reconstruction_grid_size`. Raises ConfigError, OutputError,
    MissingDependencyError, IndexCorruptError.
    """
    from simsearch.encoders import LinearEncoder

    start = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    out = check_writable(out)
    if not 1 <= n <= 50:
        raise ConfigError(f"--n must be between 1 and 50, got {n}")
    if len(index) == 0:
        raise ConfigError("the index is empty: nothing to reconstruct")
    rows = _pick_items(np.asarray(index.labels), min(n, len(index)), seed)
    originals = np.asarray(index.images[rows])
    target = originals.astype(np.float32) / 255.0
    model = index.manifest.get("model", {})
    kind, dim = str(model.get("model") or "?"), index.dim

    linear = isinstance(index.encoder, LinearEncoder)
    if "autoencoder.keras" in index.extra_files:
        recon = _autoencoder_reconstruct(index.model_file("autoencoder.keras"), originals, reporter)
        name, detail = "autoencoder", f"{kind}, {dim}-d code"
    elif linear:
        encoder: Any = index.encoder
        recon = _pca_reconstruct(encoder.mean, encoder.components, originals)
        name, detail = "PCA model", f"{dim}-d code"
    else:
        raise ConfigError(
            f"this index has no autoencoder.keras: its {kind} model cannot reconstruct images"
        )
    result_rows = [
        ReconstructionRow("original", "", target),
        ReconstructionRow(name, detail, recon, _mse(recon, target)),
    ]
    if compare_pca and linear:
        reporter.message("--compare-pca: the index's model is PCA already, no extra row")
    elif compare_pca:
        from simsearch.encoders import fit_pca

        with reporter.task("fitting PCA", total=None, unit="images") as advance:
            mean, components = fit_pca(np.asarray(index.images), dim, seed=seed)
            advance(len(index))
        pca = _pca_reconstruct(mean, components, originals)
        result_rows.append(ReconstructionRow("PCA", f"{dim}-d code", pca, _mse(pca, target)))

    names = index.label_names
    captions = [index.label_name_of(int(r)) or str(index.ids[r]) for r in rows] if names else []
    title = (
        f"What a {dim}-d code keeps: {len(rows)} catalog items and their reconstructions "
        "(MSE per pixel, pixels in [0, 1])"
    )
    reconstruction_grid(result_rows, out, title, captions)
    return ReconstructionResult(
        out, [str(index.ids[r]) for r in rows], result_rows, time.perf_counter() - start
    )


def _pick_items(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` random rows, taking the classes in turn (0, 1, ..., 9, 0, ...) when labelled."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels[labels >= 0].tolist()))
    if not classes:
        return np.sort(rng.choice(len(labels), size=n, replace=False))
    pools = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    picked: list[int] = []
    while len(picked) < n:
        for c in classes:
            if pools[c] and len(picked) < n:
                picked.append(pools[c].pop())
    return np.asarray(picked, dtype=np.int64)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _pca_reconstruct(mean: np.ndarray, components: np.ndarray, images: np.ndarray) -> np.ndarray:
    """PCA reconstruction of (n, 28, 28) uint8 images -> (n, 28, 28) float32 in [0, 1]."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), 784) / 255.0
    codes = (x - mean) @ components
    return np.clip(codes @ components.T + mean, 0.0, 1.0).reshape(-1, 28, 28).astype(np.float32)


def _autoencoder_reconstruct(path: Path, images: np.ndarray, reporter: Reporter) -> np.ndarray:
    """Run the saved Keras autoencoder on (n, 28, 28) uint8 -> (n, 28, 28) float32 in [0, 1]."""
    from simsearch.errors import IndexCorruptError
    from simsearch.models import import_keras, load_autoencoder

    reporter.message("loading TensorFlow ...")
    try:
        import_keras()
    except ImportError:
        raise MissingDependencyError(
            "reconstruct needs TensorFlow and Keras, which are not installed: "
            "pip install 'simsearch[train]'"
        ) from None
    try:
        # (load_autoencoder registers simsearch's own layers and models first: VAE, gain)
        model = load_autoencoder(path)
    except Exception as exc:  # Keras raises many untyped errors for a bad file
        message = " ".join(str(exc).split())[:200]
        raise IndexCorruptError(f"{path}: not a loadable Keras model ({message})") from None
    recon = model.predict(np.asarray(images, dtype=np.float32), verbose=0)
    return np.clip(np.asarray(recon, dtype=np.float32).reshape(-1, 28, 28), 0.0, 1.0)


def reconstruction_grid_size(n: int, rows: int) -> tuple[int, int]:
    """Pixel size (width, height) of a reconstruction grid: ``n`` items, ``rows`` rows."""
    width = 2 * MARGIN + RECON_LABEL_W + n * (RECON_TILE + PAD)
    height = 2 * MARGIN + RECON_TITLE_H + rows * RECON_ROW_H + RECON_CAPTION_H
    return width, height


def reconstruction_grid(
    rows: Sequence[ReconstructionRow],
    out: str | os.PathLike[str],
    title: str = "",
    captions: Sequence[str] = (),
) -> Path:
    """Draw rows of (n, 28, 28) images in [0, 1] (first row: the originals, captioned with
    ``captions``) with a label column (name, detail, MSE) into the PNG ``out``."""
    out = check_writable(out)
    if not rows or len(rows[0].pixels) == 0:
        raise ConfigError("no images to draw")
    n = len(rows[0].pixels)
    width, height = reconstruction_grid_size(n, len(rows))
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (MARGIN, MARGIN + 4),
        fit_text(draw, title, typeface(15), width - 2 * MARGIN),
        font=typeface(15),
        fill=INK,
    )
    top = MARGIN + RECON_TITLE_H
    left = MARGIN + RECON_LABEL_W
    for r, row in enumerate(rows):
        if len(row.pixels) != n:
            raise ConfigError(f"row {row.name!r} has {len(row.pixels)} images, expected {n}")
        lines = [(row.name, typeface(14), INK)]
        if row.detail:
            lines.append((row.detail, typeface(12), GREY_INK))
        if row.mse is not None:
            lines.append((f"MSE {row.mse:.4f}", typeface(12), GREY_INK))
        y = top + PAD + (RECON_TILE - 18 * len(lines)) // 2
        for text, font, fill in lines:
            draw.text(
                (MARGIN, y), fit_text(draw, text, font, RECON_LABEL_W - 8), font=font, fill=fill
            )
            y += 18
        for i in range(n):
            x = left + i * (RECON_TILE + PAD)
            canvas.paste(tile(row.pixels[i], RECON_TILE), (x, top + PAD))
            if r == 0 and i < len(captions):
                centred(
                    draw,
                    x - PAD // 2,
                    top + PAD + RECON_TILE + 3,
                    RECON_TILE + PAD,
                    captions[i],
                    typeface(11),
                    GREY_INK,
                )
        top += RECON_ROW_H + (RECON_CAPTION_H if r == 0 else 0)
    return save_png(canvas, out)
