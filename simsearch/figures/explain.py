"""Draw what the preprocessing did with query images, so a user sees why a query went wrong.

One row per image, four panels: the image as analysed (reduced, EXIF-oriented, transparency
flattened), the background estimated from it, the object found (tinted) with the crop box (turned
when the object was tilted), and the 28x28 model input. Captions give the noise level, the
polarity and the tilt. Pillow only; see :func:`simsearch.images.explain` for the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from simsearch.figures.drawing import fit_text, save_png, typeface
from simsearch.images import AS_FOUND, SIZE, Steps

__all__ = ["PANEL", "ExplainRow", "draw_explain", "explain_size"]

PANEL = 224  # each panel is at most PANEL x PANEL (the model input: 28 px scaled 8x)
PAD = 10
NAME_H = 22  # the query's name above its panels
CAPTION_H = 40  # two caption lines under each panel
COLUMNS = 4
INK, GREY_INK, BOX, MASK = "#202020", "#606060", "#ff2d2d", (0, 170, 255)


@dataclass(frozen=True)
class ExplainRow:
    """One query: its name, the model input and what the preprocessing found (None: the image
    was already a 28x28 catalog-like item and used as it was)."""

    name: str
    pixels: np.ndarray
    steps: Steps | None
    framing: str = AS_FOUND  # the view of a photo that matched best (images.preprocess_views)


def explain_size(rows: int) -> tuple[int, int]:
    """Pixel size (width, height) of the figure for ``rows`` queries."""
    width = 2 * PAD + COLUMNS * (PANEL + PAD) - PAD
    return width, PAD + rows * (NAME_H + PANEL + CAPTION_H + PAD)


def draw_explain(rows: Sequence[ExplainRow], out: str | os.PathLike[str]) -> Path:
    """Write the figure for ``rows`` as a PNG file ``out``.

    Raises:
        OutputError: the file cannot be written.
    """
    path = Path(out)
    canvas = Image.new("RGB", explain_size(len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    top = PAD
    for row in rows:
        _draw_row(canvas, draw, row, top)
        top += NAME_H + PANEL + CAPTION_H + PAD
    return save_png(canvas, path)


def _draw_row(canvas: Image.Image, draw: ImageDraw.ImageDraw, row: ExplainRow, top: int) -> None:
    draw.text(
        (PAD, top + 3),
        fit_text(draw, row.name, typeface(14), canvas.width - 2 * PAD),
        font=typeface(14),
        fill=INK,
    )
    y = top + NAME_H
    panels: list[tuple[Image.Image, str, str]] = []
    steps = row.steps
    if steps is None:
        panels.append((_gray(row.pixels), "used as it is:", "a 28x28 catalog-like image"))
    else:
        h, w = steps.mask.shape
        photo = Image.fromarray(steps.image, "RGB")
        polarity = "light background: negated" if steps.dark_object else "dark background"
        panels.append((photo, f"as analysed ({w}x{h})", polarity))
        flat = np.ptp(steps.background.reshape(-1, 3), axis=0).max() < 1
        kind = "one colour" if flat else "uneven light"
        panels.append(
            (
                Image.fromarray(steps.background, "RGB"),
                f"background: {kind}",
                f"noise sigma {steps.noise:.1f} levels",
            )
        )
        tilt = (
            f"tilt {steps.tilt:+.1f} deg corrected" if steps.tilt else "upright (no tilt corrected)"
        )
        panels.append((_overlay(steps), "object (blue) and crop (red)", tilt))
    framing = "light object on black" if row.framing == AS_FOUND else f"best view: {row.framing}"
    panels.append((_gray(row.pixels), f"model input {SIZE}x{SIZE}", framing))
    font = typeface(12)
    for i, (image, line1, line2) in enumerate(panels):
        x = PAD + i * (PANEL + PAD)
        shown = _fit_panel(image, nearest=image.size == (SIZE, SIZE))
        canvas.paste(shown, (x + (PANEL - shown.width) // 2, y + (PANEL - shown.height) // 2))
        draw.text((x, y + PANEL + 4), fit_text(draw, line1, font, PANEL), font=font, fill=INK)
        draw.text((x, y + PANEL + 21), fit_text(draw, line2, font, PANEL), font=font, fill=GREY_INK)


def _overlay(steps: Steps) -> Image.Image:
    """The analysed image, the object mask tinted, the crop box drawn (at the panel's scale)."""
    base = steps.image.astype(np.float32)
    tint = np.array(MASK, np.float32)
    base = np.where(steps.mask[:, :, None], 0.55 * base + 0.45 * tint, 0.75 * base + 0.25 * 255)
    image = Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8), "RGB")
    scale = PANEL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    corners = [(float(x) * scale, float(y) * scale) for x, y in steps.box]
    ImageDraw.Draw(image).polygon(corners, outline=BOX, width=2)
    return image


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, np.uint8), "L").convert("RGB")


def _fit_panel(image: Image.Image, nearest: bool) -> Image.Image:
    scale = PANEL / max(image.size)
    if abs(scale - 1.0) < 1e-9:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return image.resize(size, method)
