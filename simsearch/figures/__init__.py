"""Figures as PNG files, one module per job.

- ``grids``: :func:`query_grid` (Pillow), the result grid of ``simsearch query --grid``.
- ``maps``: :func:`embedding_map` (matplotlib, scikit-learn), ``simsearch map``.
- ``reconstructions``: :func:`reconstruct` (Pillow; TensorFlow for an autoencoder),
  ``simsearch reconstruct``.
- ``curves``: :func:`training_curve` (matplotlib), drawn by ``build-index`` after training.
- ``explain``: :func:`draw_explain` (Pillow), what preprocessing did with query images,
  ``simsearch query --explain``.
- ``drawing``: what they share (output checks, fonts, tiles, colours).

Pillow figures have exact pixel sizes (see each module's layout constants). matplotlib (Agg
backend), scikit-learn, umap-learn and Keras are imported inside the functions that need them.
Writing a figure raises ``OutputError`` when the file cannot be written, ``ConfigError`` on bad
options and ``MissingDependencyError`` when an optional package is missing.
"""

from simsearch.figures.curves import CURVE_SIZE, loss_label, training_curve
from simsearch.figures.drawing import DPI, MARGIN, PAD, check_writable
from simsearch.figures.explain import ExplainRow, draw_explain, explain_size
from simsearch.figures.grids import (
    CAPTION,
    CELL_H,
    CELL_W,
    COLUMNS,
    GAP,
    MAX_GRID_HITS,
    SEPARATOR,
    TILE,
    QueryRow,
    query_grid,
    query_grid_size,
    query_row,
)
from simsearch.figures.maps import (
    MAP_METHODS,
    MAP_SIZE,
    METHOD_NAMES,
    TSNE_ITERATIONS,
    MapResult,
    embedding_map,
    project_2d,
)
from simsearch.figures.reconstructions import (
    ReconstructionResult,
    ReconstructionRow,
    reconstruct,
    reconstruction_grid,
    reconstruction_grid_size,
)

__all__ = [
    "CAPTION",
    "CELL_H",
    "CELL_W",
    "COLUMNS",
    "CURVE_SIZE",
    "DPI",
    "GAP",
    "MAP_METHODS",
    "MAP_SIZE",
    "MARGIN",
    "MAX_GRID_HITS",
    "METHOD_NAMES",
    "PAD",
    "SEPARATOR",
    "TILE",
    "TSNE_ITERATIONS",
    "ExplainRow",
    "MapResult",
    "QueryRow",
    "ReconstructionResult",
    "ReconstructionRow",
    "check_writable",
    "draw_explain",
    "embedding_map",
    "explain_size",
    "loss_label",
    "project_2d",
    "query_grid",
    "query_grid_size",
    "query_row",
    "reconstruct",
    "reconstruction_grid",
    "reconstruction_grid_size",
    "training_curve",
]
