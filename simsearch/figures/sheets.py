"""Contact sheets (Pillow only): blocks of captioned 28x28 tiles, e.g. one per duplicate group.

Layout, in pixels: a ``MARGIN`` around the sheet; a block is a title column of ``TITLE_W`` and
up to ``COLUMNS`` cells of ``CELL_W`` x ``CELL_H`` (a ``TILE`` x ``TILE`` image, the 28x28
pixels scaled 4x with nearest neighbour, and two caption lines); a block with more tiles ends
with a cell that says how many are left out. Blocks flow left to right, ``GAP`` apart, onto
lines of ``LINE_W`` at most, lines ``GAP`` apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from simsearch.errors import ConfigError, OutputError
from simsearch.figures.drawing import centred, check_writable, fit_text, typeface

MARGIN = 12
PAD = 8
TILE = 112  # 28 x 4
CAPTION_H = 36  # two lines
CELL_W = TILE + 2 * PAD
CELL_H = PAD + TILE + CAPTION_H
TITLE_W = 88
GAP = 16  # between blocks, and between lines
COLUMNS = 8  # tiles per block at most; the rest are counted, not drawn
LINE_W = TITLE_W + COLUMNS * CELL_W  # the widest block; narrower ones share a line
INK, GREY_INK, RULE, BACKGROUND = "#202020", "#606060", "#c8c8c8", "white"
FIRST_FRAME = "#1f77b4"  # the block's first tile (a group's first item)


@dataclass(frozen=True)
class SheetBlock:
    """One block: a title (two lines at most), tiles (m, 28, 28) uint8 and two caption lines
    per tile. The first tile gets a coloured frame."""

    title: str
    pixels: np.ndarray
    captions: Sequence[tuple[str, str]]


def sheet_size(tiles_per_block: Sequence[int]) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of blocks holding these numbers of tiles."""
    _, width, lines = _layout(tiles_per_block)
    return 2 * MARGIN + width, 2 * MARGIN + lines * CELL_H + (lines - 1) * GAP


def _layout(tiles_per_block: Sequence[int]) -> tuple[list[tuple[int, int]], int, int]:
    """Each block's (x, y) offset, the widest line's width and the number of lines."""
    places: list[tuple[int, int]] = []
    x = line = width = 0
    for tiles in tiles_per_block:
        block_w = TITLE_W + min(max(tiles, 1), COLUMNS) * CELL_W
        if x and x + GAP + block_w > LINE_W:
            x, line = 0, line + 1
        x += GAP if x else 0
        places.append((x, line * (CELL_H + GAP)))
        x += block_w
        width = max(width, x)
    return places, max(width, TITLE_W + CELL_W), line + 1


def contact_sheet(blocks: Sequence[SheetBlock], out: str | os.PathLike[str]) -> Path:
    """Draw ``blocks`` into the PNG file ``out`` (size: :func:`sheet_size`); returns its path.
    Raises ConfigError (no blocks, wrong shapes, captions missing) or OutputError."""
    out = check_writable(out)
    if not blocks:
        raise ConfigError("nothing to draw on the sheet")
    for block in blocks:
        pixels = np.asarray(block.pixels)
        if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or pixels.dtype != np.uint8:
            raise ConfigError(f"{block.title}: tiles must be (m, 28, 28) uint8, got {pixels.shape}")
        if len(block.captions) < len(pixels):
            raise ConfigError(
                f"{block.title}: {len(pixels)} tiles but {len(block.captions)} captions"
            )
    counts = [len(block.pixels) for block in blocks]
    width, height = sheet_size(counts)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    places, _, _ = _layout(counts)
    for block, (left, top) in zip(blocks, places, strict=True):
        _draw_block(canvas, draw, block, MARGIN + left, MARGIN + top)
    try:
        canvas.save(out, format="PNG", optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _draw_block(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, block: SheetBlock, left: int, top: int
) -> None:
    big, small = typeface(13), typeface(11)
    if left > MARGIN:  # a rule between two blocks on one line
        x = left - GAP // 2
        draw.line((x, top + PAD, x, top + CELL_H - PAD), fill=RULE, width=1)
    for line, text in enumerate(block.title.splitlines()[:2]):
        font = big if line == 0 else small
        draw.text((left, top + PAD + 18 * line), fit_text(draw, text, font, TITLE_W - 6), INK, font)
    count = len(block.pixels)
    shown = count if count <= COLUMNS else COLUMNS - 1
    for i in range(shown):
        x, y = left + TITLE_W + i * CELL_W + PAD, top + PAD
        if i == 0:
            draw.rectangle((x - 3, y - 3, x + TILE + 2, y + TILE + 2), fill=FIRST_FRAME)
        tile = Image.fromarray(np.asarray(block.pixels[i]), mode="L")
        canvas.paste(tile.resize((TILE, TILE), Image.Resampling.NEAREST), (x, y))
        first, second = block.captions[i]
        centred(draw, x - PAD + 2, y + TILE + 4, CELL_W - 4, first, small, INK, tail=True)
        centred(draw, x - PAD + 2, y + TILE + 19, CELL_W - 4, second, small, GREY_INK)
    if shown < count:
        x = left + TITLE_W + shown * CELL_W
        centred(draw, x, top + PAD + TILE // 2 - 7, CELL_W, f"+{count - shown} more", big, GREY_INK)
