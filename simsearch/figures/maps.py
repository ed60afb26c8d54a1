"""Embedding maps (matplotlib, scikit-learn): the catalog's embeddings in 2-D (t-SNE, UMAP or
PCA), coloured by class, optionally with thumbnails at well-spread points."""

from __future__ import annotations

import io
import os
import re
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch.errors import ConfigError, MissingDependencyError
from simsearch.figures.drawing import (
    CLASS_COLORS,
    NEUTRAL,
    check_writable,
    matplotlib_classes,
    new_figure,
    save_figure,
)
from simsearch.progress import Reporter

if TYPE_CHECKING:
    from simsearch.search_index import SearchIndex

MAP_SIZE = (10.0, 8.0)  # inches at DPI: 1000 x 800 px
MAP_METHODS = ("tsne", "umap", "pca")
MAP_MIN_ITEMS = 5
TSNE_ITERATIONS = 500  # scikit-learn's default is 1000; 3,000 points settle well before 500


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
    matplotlib_classes()  # a missing package fails before any work
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
    fig, ax = new_figure(MAP_SIZE)
    size = float(np.clip(36000 / len(rows), 4, 30))
    for label in sorted(set(labels.tolist()), key=lambda c: (c < 0, c)):
        mask = labels == label
        name = names[label] if 0 <= label < len(names) else ("unlabelled" if label < 0 else label)
        ax.scatter(
            coords[mask, 0],
            coords[mask, 1],
            s=size,
            color=class_color(label),
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
    save_figure(fig, out)
    return MapResult(out, method, len(rows), shown, project_seconds, time.perf_counter() - start)


def class_color(label: int) -> str:
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
            bboxprops={"edgecolor": class_color(int(labels[i])), "linewidth": 1.5},
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
                "pip install 'simsearch[figures]' (or use --method pca)"
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
        # One OpenMP thread: OpenMP's busy-waiting threads slow t-SNE down when other jobs
        # share the cores. scikit-learn reports its iterations with print().
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
