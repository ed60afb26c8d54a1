"""What every figure shares: output checks, PNG saving, fonts, tiles, colours, matplotlib.

Pillow is imported here; matplotlib only by :func:`new_figure` (Agg canvas, no pyplot).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simsearch.errors import ConfigError, MissingDependencyError, OutputError

MARGIN = 12  # around every figure drawn with Pillow, in pixels
PAD = 8  # around each tile
DPI = 100  # matplotlib figures: size in inches at DPI -> exact pixel sizes
CLASS_COLORS = [  # matplotlib's tab10, so Pillow and matplotlib figures agree
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
MATCH, MISMATCH, NEUTRAL = "#2ca02c", "#d62728", "#c8c8c8"
INK, GREY_INK, BACKGROUND = "#202020", "#606060", "white"


def check_writable(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path; ``OutputError`` (before any work) when it cannot be written: its folder
    is missing or read-only, it is a directory, or its name does not end in .png."""
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: directory {parent} is not writable")
    if path.suffix.lower() != ".png":
        raise OutputError(f"cannot write {path}: figures are PNG files, use a .png name")
    return path


def save_png(image: Image.Image, out: Path) -> Path:
    try:
        image.save(out, format="PNG", optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def save_figure(fig: Any, out: Path) -> Path:
    try:
        fig.savefig(out, format="png", dpi=DPI)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def matplotlib_classes() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes; MissingDependencyError when not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "this figure needs matplotlib, which is not installed: pip install 'simsearch[figures]'"
        ) from None
    return Figure, FigureCanvasAgg


def new_figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure on an Agg canvas and its axes. No pyplot: no global state, and the caller's
    backend (a notebook's, say) is left alone."""
    figure_class, canvas_class = matplotlib_classes()
    fig = figure_class(figsize=size, dpi=DPI, layout="constrained")
    canvas_class(fig)
    return fig, fig.subplots()


@functools.lru_cache(maxsize=16)
def typeface(size: int) -> Any:
    """DejaVu Sans when the system has it, else Pillow's bundled scalable font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def fit_text(
    draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, tail: bool = False
) -> str:
    """``text`` shortened with an ellipsis until it is at most ``width`` pixels wide; ``tail``
    keeps its end (the distinctive part of an id or a path) instead of its start."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text if tail else text + "…", font=font) > width:
        text = text[1:] if tail else text[:-1]
    return "…" + text if tail else text + "…"


def centred(
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    width: int,
    text: str,
    font: Any,
    fill: str,
    tail: bool = False,
) -> None:
    text = fit_text(draw, text, font, width, tail)
    draw.text((x + (width - draw.textlength(text, font=font)) / 2, y), text, font=font, fill=fill)


def tile(pixels: np.ndarray, size: int) -> Image.Image:
    """(28, 28) uint8 (or [0, 1] floats) -> a size x size grayscale tile, nearest neighbour."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="L").resize((size, size), Image.Resampling.NEAREST)


def frame(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, color: str, width: int) -> None:
    draw.rectangle((x - width, y - width, x + size + width - 1, y + size + width - 1), fill=color)


def check_shape(pixels: np.ndarray, name: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.shape[-2:] != (28, 28):
        raise ConfigError(f"{name}: expected 28x28 images, got shape {pixels.shape}")
    return pixels
