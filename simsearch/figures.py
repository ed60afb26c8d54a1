"""Figures as PNG files: query result grids, an embedding map, reconstructions, training curves.

- :func:`query_grid` (Pillow): per query, the image as given, the 28x28 image the model sees,
  then the top-k neighbours captioned with rank, label and similarity.
- :func:`embedding_map` (matplotlib, scikit-learn): the catalog's embeddings in 2-D (t-SNE, UMAP
  or PCA), coloured by class, optionally with thumbnails at well-spread points.
- :func:`reconstruct` (Pillow; TensorFlow for an autoencoder): originals, the model's
  reconstructions and optionally PCA reconstructions with the same code size.
- :func:`training_curve` (matplotlib): train and validation loss per epoch.

Grids are drawn with Pillow so their pixel sizes are exact (see the layout constants below) and
``simsearch query --grid`` needs neither matplotlib nor TensorFlow. matplotlib (Agg backend),
scikit-learn, umap-learn and Keras are imported inside the functions that need them.
Writing a figure raises ``OutputError`` when the file cannot be written, ``ConfigError`` on bad
options and ``MissingDependencyError`` when an optional package is missing.
"""

from __future__ import annotations

import functools
import io
import os
import re
import time
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from simsearch.errors import ConfigError, MissingDependencyError, OutputError
from simsearch.progress import Reporter

if TYPE_CHECKING:
    from simsearch.hit import Hit
    from simsearch.images import ImageInput
    from simsearch.search_index import SearchIndex

# ---------------------------------------------------------------- layout (pixels)

MARGIN = 12  # around every grid
PAD = 8  # around each tile

# Query grid: one cell per image; a query block is [as given][model input] GAP [hit 1] ... [hit C]
TILE = 112  # a 28x28 image scaled 4x (nearest neighbour)
CAPTION = 40  # two caption lines under each tile
CELL_W = TILE + 2 * PAD  # 128
CELL_H = PAD + TILE + CAPTION  # 160
GAP = 24  # between the query cells and the neighbours
SEPARATOR = 16  # between two query blocks
COLUMNS = 10  # neighbours per line; more wrap onto further lines
MAX_GRID_HITS = 100  # neighbours drawn per query at most

# Reconstruction grid: a label column, then one tile per item; class names under the originals.
RECON_TILE = 84  # a 28x28 image scaled 3x
RECON_LABEL_W = 150
RECON_TITLE_H = 30
RECON_CAPTION_H = 18
RECON_ROW_H = RECON_TILE + 2 * PAD  # 100

# matplotlib figures: size in inches at DPI -> exact pixel sizes.
DPI = 100
MAP_SIZE = (10.0, 8.0)  # 1000 x 800 px
CURVE_SIZE = (6.0, 3.6)  # 600 x 360 px

MAP_METHODS = ("tsne", "umap", "pca")
MAP_MIN_ITEMS = 5
TSNE_ITERATIONS = 500  # scikit-learn's default is 1000; 3,000 points settle well before 500
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


# ---------------------------------------------------------------- shared helpers


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


def _save_png(image: Image.Image, out: Path) -> Path:
    try:
        image.save(out, format="PNG", optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _save_figure(fig: Any, out: Path) -> Path:
    try:
        fig.savefig(out, format="png", dpi=DPI)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes; MissingDependencyError when not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "this figure needs matplotlib, which is not installed: pip install 'simsearch[train]'"
        ) from None
    return Figure, FigureCanvasAgg


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure on an Agg canvas and its axes. No pyplot: no global state, and the caller's
    backend (a notebook's, say) is left alone."""
    figure_class, canvas_class = _matplotlib()
    fig = figure_class(figsize=size, dpi=DPI, layout="constrained")
    canvas_class(fig)
    return fig, fig.subplots()


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Any:
    """DejaVu Sans when the system has it, else Pillow's bundled scalable font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis until it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _centred(
    draw: ImageDraw.ImageDraw, x: int, y: int, width: int, text: str, font: Any, fill: str
) -> None:
    text = _fit(draw, text, font, width)
    draw.text((x + (width - draw.textlength(text, font=font)) / 2, y), text, font=font, fill=fill)


def _tile(pixels: np.ndarray, size: int) -> Image.Image:
    """(28, 28) uint8 (or [0, 1] floats) -> a size x size grayscale tile, nearest neighbour."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="L").resize((size, size), Image.Resampling.NEAREST)


def _frame(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, color: str, width: int) -> None:
    draw.rectangle((x - width, y - width, x + size + width - 1, y + size + width - 1), fill=color)


def _check_shape(pixels: np.ndarray, name: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.shape[-2:] != (28, 28):
        raise ConfigError(f"{name}: expected 28x28 images, got shape {pixels.shape}")
    return pixels


# ---------------------------------------------------------------- query grid


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
    return QueryRow(name, image, _check_shape(pixels, name), shown, hit_pixels, label)


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
    return _save_png(canvas, out)


def _draw_query_block(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, row: QueryRow, top: int
) -> int:
    """Draw one query block with its top edge at ``top``; returns the next block's top."""
    big, small = _font(13), _font(12)
    hits = row.hits[:MAX_GRID_HITS]
    if len(row.hit_pixels) < len(hits):
        raise ConfigError(f"{row.name}: {len(hits)} hits but {len(row.hit_pixels)} hit images")
    y = top + PAD
    caption = y + TILE + 5
    x = MARGIN + PAD
    given = _as_given(row.image)
    _frame(draw, x, y, TILE, NEUTRAL, 1)
    canvas.paste(given if given is not None else _tile(row.pixels, TILE), (x, y))
    query = f"query: {row.label}" if row.label else "query"
    _centred(draw, x - PAD + 2, caption, CELL_W - 4, query, big, INK)
    _centred(draw, x - PAD + 2, caption + 17, CELL_W - 4, Path(row.name).name, small, GREY_INK)
    x += CELL_W
    _frame(draw, x, y, TILE, NEUTRAL, 1)
    canvas.paste(_tile(row.pixels, TILE), (x, y))
    _centred(draw, x - PAD + 2, caption, CELL_W - 4, "model input", big, INK)
    _centred(draw, x - PAD + 2, caption + 17, CELL_W - 4, "28×28", small, GREY_INK)

    left = MARGIN + 2 * CELL_W + GAP + PAD
    for i, hit in enumerate(hits):
        line, column = divmod(i, COLUMNS)
        x, y = left + column * CELL_W, top + line * CELL_H + PAD
        color = NEUTRAL
        if row.label is not None and hit.label_name is not None:
            color = MATCH if hit.label_name == row.label else MISMATCH
        _frame(draw, x, y, TILE, color, 1 if color == NEUTRAL else 3)
        canvas.paste(_tile(row.hit_pixels[i], TILE), (x, y))
        label = hit.label_name or (str(hit.label) if hit.label is not None else hit.id)
        sim = f"sim {hit.similarity:.3f}"
        _centred(draw, x - PAD + 2, y + TILE + 5, CELL_W - 4, f"#{hit.rank} {label}", big, INK)
        _centred(draw, x - PAD + 2, y + TILE + 22, CELL_W - 4, sim, small, GREY_INK)
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


# ---------------------------------------------------------------- embedding map


@dataclass(frozen=True)
class MapResult:
    """What :func:`embedding_map` drew and how long it took (seconds)."""

    path: Path
    method: str
    points: int
    thumbnails: int
    project_seconds: float
    total_seconds: float


METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}


def embedding_map(
    index: SearchIndex,
    out: str | os.PathLike[str],
    method: str = "tsne",
    sample: int = 3000,
    thumbnails: bool = True,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> MapResult:
    """Draw ``sample`` random catalog embeddings (``index.vectors``) in 2-D into the PNG ``out``.

    Points are coloured by class (legend with counts); with ``thumbnails`` small item images sit
    at well-spread points, framed in their class colour. ``method``: tsne (scikit-learn), umap
    (umap-learn, optional) or pca. The figure is MAP_SIZE inches at DPI (1000 x 800 px).
    Raises ConfigError, MissingDependencyError or OutputError.
    """
    start = time.perf_counter()
    reporter = reporter or Reporter(quiet=True)
    out = check_writable(out)
    method = method.lower()
    if method not in MAP_METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of {', '.join(MAP_METHODS)}")
    if sample < MAP_MIN_ITEMS:
        raise ConfigError(f"--sample must be at least {MAP_MIN_ITEMS}, got {sample}")
    if len(index) < MAP_MIN_ITEMS:
        raise ConfigError(f"a map needs at least {MAP_MIN_ITEMS} items, the index has {len(index)}")
    _matplotlib()  # a missing package fails before any work
    _projector(method)

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(index), size=min(sample, len(index)), replace=False))
    vectors = np.asarray(index.vectors[rows], dtype=np.float32)
    reporter.message(
        f"map: {METHOD_NAMES[method]} of {len(rows):,} of {len(index):,} items "
        f"({index.dim}-d embeddings)"
    )
    t0 = time.perf_counter()
    coords = project_2d(vectors, method, seed, reporter)
    project_seconds = time.perf_counter() - t0

    labels = np.asarray(index.labels[rows]).astype(np.int64)
    names = index.label_names
    fig, ax = _figure(MAP_SIZE)
    size = float(np.clip(36000 / len(rows), 4, 30))
    for label in sorted(set(labels.tolist()), key=lambda c: (c < 0, c)):
        mask = labels == label
        name = names[label] if 0 <= label < len(names) else ("unlabelled" if label < 0 else label)
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=size,
            color=_class_color(label),
            alpha=0.75,
            linewidths=0,
            label=f"{name} ({int(mask.sum()):,})",
        )
    shown = 0
    if thumbnails:
        shown = _draw_thumbnails(ax, coords, np.asarray(index.images[rows]), labels, rng)
    model = index.manifest.get("model", {}).get("model") or "?"
    ax.set_title(
        f"{METHOD_NAMES[method]} map of {len(rows):,} catalog embeddings "
        f"({model} model, {index.dim}-d, cosine)",
        fontsize=14,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(NEUTRAL)
    legend = ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=11,
        markerscale=max(1.0, 60 / size) ** 0.5,
        title="class (points)",
        title_fontsize=11,
    )
    legend._legend_box.align = "left"
    _save_figure(fig, out)
    return MapResult(out, method, len(rows), shown, project_seconds, time.perf_counter() - start)


def _class_color(label: int) -> str:
    return CLASS_COLORS[label % len(CLASS_COLORS)] if label >= 0 else "#a0a0a0"


def _draw_thumbnails(
    ax: Any,
    coords: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    count: int = 80,
    spacing: float = 0.075,
) -> int:
    """Item images (dark on white, 28 px) at up to ``count`` points at least ``spacing`` apart
    (in axes fractions), so they do not cover each other. Returns how many were drawn."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    span = np.ptp(coords, axis=0)
    unit = (coords - coords.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen: list[int] = []
    for i in rng.permutation(len(coords)).tolist():
        if chosen and np.min(np.linalg.norm(unit[chosen] - unit[i], axis=1)) < spacing:
            continue
        chosen.append(i)
        if len(chosen) == count:
            break
    for i in chosen:
        box = AnnotationBbox(
            OffsetImage(np.repeat(255 - images[i, :, :, None], 3, axis=2), zoom=1.0),
            (float(coords[i, 0]), float(coords[i, 1])),
            frameon=True,
            pad=0.1,
            bboxprops={"edgecolor": _class_color(int(labels[i])), "linewidth": 1.5},
        )
        ax.add_artist(box)
    return len(chosen)


def _projector(method: str) -> Any:
    """The class that projects to 2-D for ``method``; MissingDependencyError if not installed."""
    if method == "pca":
        return None
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise MissingDependencyError(
                "--method tsne needs scikit-learn, which is not installed: "
                "pip install 'simsearch[train]' (or use --method pca)"
            ) from None
        return TSNE
    try:
        import umap
    except ImportError:
        raise MissingDependencyError(
            "--method umap needs umap-learn, which is not installed: pip install umap-learn "
            "(or use --method tsne)"
        ) from None
    return umap.UMAP


def project_2d(
    vectors: np.ndarray, method: str = "tsne", seed: int = 0, reporter: Reporter | None = None
) -> np.ndarray:
    """(n, d) float32 vectors -> (n, 2) float32 map coordinates (tsne, umap or pca)."""
    reporter = reporter or Reporter(quiet=True)
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < MAP_MIN_ITEMS:
        raise ConfigError(f"a map needs at least {MAP_MIN_ITEMS} points, got {n}")
    projector = _projector(method)
    if method == "pca":
        centred = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        coords = u[:, :2] * s[:2]
        return coords.astype(np.float32)
    if method == "umap":
        with reporter.task("UMAP", total=None, unit="items") as advance:
            model = projector(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
            coords = model.fit_transform(x)
            advance(n)
        return np.asarray(coords, dtype=np.float32)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    max_iter = TSNE_ITERATIONS
    tsne = projector(
        n_components=2,
        perplexity=min(30.0, (n - 1) / 3),
        init="pca",
        learning_rate="auto",
        max_iter=max_iter,
        random_state=seed,
        verbose=0 if reporter.quiet else 2,
    )
    with reporter.task("t-SNE", total=max_iter, unit="iterations") as advance:
        counter = _IterationCounter(advance)
        # One OpenMP thread: on the loaded 2-core sandbox 3,000 points took 39 s with one thread
        # and 78 s with two (busy-waiting threads). scikit-learn reports iterations with print().
        with threadpool_limits(1, user_api="openmp"), redirect_stdout(counter):
            coords = tsne.fit_transform(x)
        advance(max_iter - counter.done)
    return np.asarray(coords, dtype=np.float32)


class _IterationCounter(io.TextIOBase):
    """A text stream that turns t-SNE's ``Iteration N:`` lines into progress-bar advances."""

    pattern = re.compile(r"Iteration (\d+)")

    def __init__(self, advance: Any) -> None:
        super().__init__()
        self.advance = advance
        self.done = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for match in self.pattern.finditer(text):
            iteration = int(match.group(1))
            if iteration > self.done:
                self.advance(iteration - self.done)
                self.done = iteration
        return len(text)


# ---------------------------------------------------------------- reconstructions


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

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    reporter.message("loading TensorFlow ...")
    try:
        import keras  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "reconstruct needs TensorFlow and Keras, which are not installed: "
            "pip install 'simsearch[train]'"
        ) from None
    from simsearch.models import load_autoencoder

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
        _fit(draw, title, _font(15), width - 2 * MARGIN),
        font=_font(15),
        fill=INK,
    )
    top = MARGIN + RECON_TITLE_H
    left = MARGIN + RECON_LABEL_W
    for r, row in enumerate(rows):
        if len(row.pixels) != n:
            raise ConfigError(f"row {row.name!r} has {len(row.pixels)} images, expected {n}")
        lines = [(row.name, _font(14), INK)]
        if row.detail:
            lines.append((row.detail, _font(12), GREY_INK))
        if row.mse is not None:
            lines.append((f"MSE {row.mse:.4f}", _font(12), GREY_INK))
        y = top + PAD + (RECON_TILE - 18 * len(lines)) // 2
        for text, font, fill in lines:
            draw.text((MARGIN, y), _fit(draw, text, font, RECON_LABEL_W - 8), font=font, fill=fill)
            y += 18
        for i in range(n):
            x = left + i * (RECON_TILE + PAD)
            canvas.paste(_tile(row.pixels[i], RECON_TILE), (x, top + PAD))
            if r == 0 and i < len(captions):
                _centred(
                    draw,
                    x - PAD // 2,
                    top + PAD + RECON_TILE + 3,
                    RECON_TILE + PAD,
                    captions[i],
                    _font(11),
                    GREY_INK,
                )
        top += RECON_ROW_H + (RECON_CAPTION_H if r == 0 else 0)
    return _save_png(canvas, out)


# ---------------------------------------------------------------- training curve


def training_curve(
    history: dict[str, list[float]],
    out: str | os.PathLike[str],
    loss_name: str = "loss",
    title: str = "autoencoder training",
) -> Path:
    """Train and validation loss per epoch (Keras ``History.history``) into the PNG ``out``.

    Marks the epoch with the lowest validation loss (the weights early stopping keeps).
    CURVE_SIZE inches at DPI (600 x 360 px). Raises ConfigError (no loss values) or OutputError.
    """
    out = check_writable(out)
    losses = [float(v) for v in history.get("loss", [])]
    if not losses:
        raise ConfigError("the training history has no 'loss' values")
    fig, ax = _figure(CURVE_SIZE)
    from matplotlib.ticker import MaxNLocator

    epochs = list(range(1, len(losses) + 1))
    ax.plot(epochs, losses, marker="o", markersize=4, color=CLASS_COLORS[0], label="train")
    val = [float(v) for v in history.get("val_loss", [])]
    if val:
        ax.plot(
            epochs[: len(val)],
            val,
            marker="o",
            markersize=4,
            color=CLASS_COLORS[1],
            label="validation",
        )
        best = int(np.argmin(val))
        ax.scatter(
            [best + 1],
            [val[best]],
            s=140,
            facecolors="none",
            edgecolors=INK,
            zorder=3,
            label=f"best validation: {val[best]:.4f} (epoch {best + 1})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(loss_name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _save_figure(fig, out)
