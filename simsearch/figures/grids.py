"""Query result grids (Pillow only, so ``simsearch query --grid`` needs neither matplotlib nor
TensorFlow): per query, the image as given, the 28x28 image the model sees, then the top-k
neighbours captioned with rank, label and similarity."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from simsearch.errors import ConfigError
from simsearch.figures.drawing import (
    BACKGROUND,
    GREY_INK,
    INK,
    MARGIN,
    MATCH,
    MISMATCH,
    NEUTRAL,
    PAD,
    centred,
    check_shape,
    check_writable,
    frame,
    save_png,
    tile,
    typeface,
)

if TYPE_CHECKING:
    from simsearch.hit import Hit
    from simsearch.images import ImageInput
    from simsearch.search_index import SearchIndex

# One cell per image; a query block is [as given][model input] GAP [hit 1] ... [hit C].
TILE = 112  # a 28x28 image scaled 4x (nearest neighbour)
CAPTION = 40  # two caption lines under each tile
CELL_W = TILE + 2 * PAD  # 128
CELL_H = PAD + TILE + CAPTION  # 160
GAP = 24  # between the query cells and the neighbours
SEPARATOR = 16  # between two query blocks
COLUMNS = 10  # neighbours per line; more wrap onto further lines
MAX_GRID_HITS = 100  # neighbours drawn per query at most


@dataclass(frozen=True)
class QueryRow:
    """One query of a result grid.

    ``image`` is the query as the user gave it (path, bytes, PIL image or array; None to show
    only the model input), ``pixels`` the (28, 28) uint8 image the model saw, ``hits`` its
    neighbours and ``hit_pixels`` their catalog images, (len(hits), 28, 28) uint8. ``label`` is
    the query's class name when known: neighbours of the same class get a green frame, the
    others a red one. Build it from an index with :func:`query_row`.
    """

    name: str
    image: ImageInput | None
    pixels: np.ndarray
    hits: list[Hit]
    hit_pixels: np.ndarray
    label: str | None = None


def query_row(
    index: SearchIndex,
    name: str,
    image: ImageInput | None,
    pixels: np.ndarray,
    hits: Sequence[Hit],
    label: str | None = None,
) -> QueryRow:
    """A :class:`QueryRow` whose neighbour images come from the index's catalog."""
    shown = list(hits)[:MAX_GRID_HITS]
    hit_pixels = (
        np.stack([index.item_pixels(hit.id) for hit in shown])
        if shown
        else np.zeros((0, 28, 28), np.uint8)
    )
    return QueryRow(name, image, check_shape(pixels, name), shown, hit_pixels, label)


def query_grid_size(k_per_query: Sequence[int]) -> tuple[int, int]:
    """Pixel size (width, height) of the grid of queries with these numbers of neighbours.

    width = 2 * MARGIN + (2 + C) * CELL_W + GAP with C = min(COLUMNS, largest k);
    height = 2 * MARGIN + lines * CELL_H + SEPARATOR * (queries - 1), one line per COLUMNS hits.
    """
    shown = [min(max(k, 1), MAX_GRID_HITS) for k in k_per_query]
    columns = min(COLUMNS, max(shown, default=1))
    lines = sum(-(-k // COLUMNS) for k in shown)
    width = 2 * MARGIN + (2 + columns) * CELL_W + GAP
    height = 2 * MARGIN + lines * CELL_H + SEPARATOR * max(0, len(shown) - 1)
    return width, height


def query_grid(rows: Sequence[QueryRow], out: str | os.PathLike[str]) -> Path:
    """Draw the result grid of one or more queries (one block each) into the PNG ``out``.

    A block: the query as given, the query as the model sees it (28x28 scaled 4x), a gap, then
    its neighbours, ``COLUMNS`` per line (at most ``MAX_GRID_HITS``), captioned ``#rank label``
    and ``sim 0.987``. Size: :func:`query_grid_size`. Returns the path written.
    Raises ConfigError (no rows, wrong shapes) or OutputError.
    """
    out = check_writable(out)
    if not rows:
        raise ConfigError("no query to draw")
    width, height = query_grid_size([len(row.hits) for row in rows])
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = MARGIN
    for number, row in enumerate(rows):
        if number:
            y = top + SEPARATOR // 2
            draw.line((MARGIN, y, width - MARGIN, y), fill=NEUTRAL, width=1)
            top += SEPARATOR
        top = _draw_query_block(canvas, draw, row, top)
    return save_png(canvas, out)


def _draw_query_block(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, row: QueryRow, top: int
) -> int:
    """Draw one query block with its top edge at ``top``; returns the next block's top."""
    big, small = typeface(13), typeface(12)
    hits = row.hits[:MAX_GRID_HITS]
    if len(row.hit_pixels) < len(hits):
        raise ConfigError(f"{row.name}: {len(hits)} hits but {len(row.hit_pixels)} hit images")
    y = top + PAD
    caption = y + TILE + 5
    x = MARGIN + PAD
    given = _as_given(row.image)
    frame(draw, x, y, TILE, NEUTRAL, 1)
    canvas.paste(given if given is not None else tile(row.pixels, TILE), (x, y))
    query = f"query: {row.label}" if row.label else "query"
    centred(draw, x - PAD + 2, caption, CELL_W - 4, query, big, INK)
    centred(draw, x - PAD + 2, caption + 17, CELL_W - 4, Path(row.name).name, small, GREY_INK)
    x += CELL_W
    frame(draw, x, y, TILE, NEUTRAL, 1)
    canvas.paste(tile(row.pixels, TILE), (x, y))
    centred(draw, x - PAD + 2, caption, CELL_W - 4, "model input", big, INK)
    centred(draw, x - PAD + 2, caption + 17, CELL_W - 4, "28×28", small, GREY_INK)

    left = MARGIN + 2 * CELL_W + GAP + PAD
    for i, hit in enumerate(hits):
        line, column = divmod(i, COLUMNS)
        x, y = left + column * CELL_W, top + line * CELL_H + PAD
        color = NEUTRAL
        if row.label is not None and hit.label_name is not None:
            color = MATCH if hit.label_name == row.label else MISMATCH
        frame(draw, x, y, TILE, color, 1 if color == NEUTRAL else 3)
        canvas.paste(tile(row.hit_pixels[i], TILE), (x, y))
        label = hit.label_name or (str(hit.label) if hit.label is not None else hit.id)
        sim = f"sim {hit.similarity:.3f}"
        centred(draw, x - PAD + 2, y + TILE + 5, CELL_W - 4, f"#{hit.rank} {label}", big, INK)
        centred(draw, x - PAD + 2, y + TILE + 22, CELL_W - 4, sim, small, GREY_INK)
    return top + max(1, -(-len(hits) // COLUMNS)) * CELL_H


def _as_given(source: ImageInput | None) -> Image.Image | None:
    """The query image as the user gave it, fitted into a TILE x TILE RGB tile (None if unusable).

    Transparent parts show as a light checkerboard. Only a display: never raises.
    """
    if source is None:
        return None
    try:
        if isinstance(source, Image.Image):
            image = source.copy()
        elif isinstance(source, np.ndarray):
            image = Image.fromarray(source)
        else:
            data = source if isinstance(source, bytes) else Path(os.fspath(source)).read_bytes()
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (TILE * 2, TILE * 2))  # JPEG: decode at a reduced size
        image = ImageOps.exif_transpose(image) or image
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            array = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((array / (array.max() or 1.0) * 255).astype(np.uint8), "L")
        rgba = image.convert("RGBA")
        rgba.thumbnail((TILE, TILE), Image.Resampling.LANCZOS)
        if max(rgba.size) < TILE:  # small images (28x28): scale up, crisp
            scale = TILE / max(rgba.size)
            size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
            rgba = rgba.resize(size, Image.Resampling.NEAREST)
    except Exception:
        return None
    tile = _checkerboard(TILE)
    tile.paste(rgba, ((TILE - rgba.width) // 2, (TILE - rgba.height) // 2), rgba)
    return tile


def _checkerboard(size: int, square: int = 8) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    board = np.where(((yy // square) + (xx // square)) % 2 == 0, 255, 232).astype(np.uint8)
    return Image.fromarray(board, mode="L").convert("RGB")
