"""Binary-mask operations for the preprocessing: connected components, holes, dilation.

numpy only (scipy.ndimage would add most of a second to a cold ``simsearch query``). The masks
this works on are small (the analysis image of :mod:`simsearch.images`, at most a few hundred
pixels a side), so the components are found on the runs of each row, with a union-find over
runs done by whole-array steps (no Python work per run).
"""

from __future__ import annotations

import numpy as np

__all__ = ["boxes", "dilate", "erode", "fill_holes", "label"]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of True in a (H, W) bool mask: (row, start, stop) int arrays."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), bool)
    padded[:, 1:-1] = mask
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])
    # row by row, left to right, a row's changes alternate: a run's start, then its stop
    return rows[::2], cols[::2], cols[1::2]


def label(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a (H, W) bool mask -> (labels (H, W) int32, count).

    Labels are 1..count in order of each component's first pixel (row-major); 0 is background.
    ``connectivity`` is 8 (diagonal neighbours connect) or 4.
    """
    mask = np.asarray(mask, bool)
    labels = np.zeros(mask.shape, np.int32)
    rows, starts, stops, root = _components(mask, connectivity)
    if len(rows) == 0:
        return labels, 0
    _, inverse = np.unique(root, return_inverse=True)
    run_labels = inverse.astype(np.int32) + 1
    _paint(labels, rows, starts, stops, run_labels)
    return labels, int(run_labels.max())


def _components(
    mask: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of a (H, W) bool mask (see :func:`_runs`) and each run's component: the index of
    the component's first run, in row-major order."""
    rows, starts, stops = _runs(mask)
    n = len(rows)
    if n == 0:
        return rows, starts, stops, np.zeros(0, np.intp)
    slack = 1 if connectivity == 8 else 0
    # Run j (row r) touches run i (row r - 1) when each starts before the other stops (give or
    # take a diagonal): those i are a contiguous range [lo, hi) of the row-major run order,
    # found by binary search on (row, column) keys.
    stride = mask.shape[1] + 4
    above = (rows - 1) * stride + 2
    lo = np.searchsorted(rows * stride + 2 + stops, above + starts - slack, side="right")
    hi = np.searchsorted(rows * stride + 2 + starts, above + stops + slack, side="left")
    lo = np.maximum(lo, np.searchsorted(rows, rows - 1, side="left"))
    count = np.maximum(hi - lo, 0)
    j = np.repeat(np.arange(n), count)
    i = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
    # Components of the runs' graph: each run takes the smallest root among its neighbours',
    # then pointers are followed to their ends, until nothing changes (vectorised union-find).
    root = np.arange(n)
    while True:
        smaller = np.minimum(root[i], root[j])
        merged = root.copy()
        np.minimum.at(merged, root[i], smaller)
        np.minimum.at(merged, root[j], smaller)
        while True:
            jumped = merged[merged]
            if np.array_equal(jumped, merged):
                break
            merged = jumped
        if np.array_equal(merged, root):
            break
        root = merged
    return rows, starts, stops, root


def _paint(
    out: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, values: np.ndarray
) -> None:
    """Set the pixels of each run (row, start..stop-1) of the 2-D array ``out`` to its value."""
    lengths = stops - starts
    offsets = np.repeat(rows * out.shape[1] + starts - (np.cumsum(lengths) - lengths), lengths)
    out.ravel()[offsets + np.arange(int(lengths.sum()))] = np.repeat(values, lengths)


def boxes(labels: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    """Bounding boxes of labels 1..count -> (top, left, bottom, right) int arrays of length
    count, inclusive."""
    # the row segments of one label each: from one change of value to the next, along a row
    h, w = labels.shape
    padded = np.zeros((h, w + 2), labels.dtype)
    padded[:, 1:-1] = labels
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])
    value = padded[rows, cols + 1]
    segment = (rows[:-1] == rows[1:]) & (value[:-1] > 0)
    ys, x0, x1 = rows[:-1][segment], cols[:-1][segment], cols[1:][segment]
    k = value[:-1][segment] - 1
    top = np.full(count, h, np.int64)
    left = np.full(count, w, np.int64)
    bottom = np.full(count, -1, np.int64)
    right = np.full(count, -1, np.int64)
    np.minimum.at(top, k, ys)
    np.minimum.at(left, k, x0)
    np.maximum.at(bottom, k, ys)
    np.maximum.at(right, k, x1 - 1)
    return top, left, bottom, right


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the border set to True."""
    mask = np.asarray(mask, bool)
    out = mask.copy()
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return out
    cols = np.flatnonzero(mask.any(axis=0))
    # holes lie inside the mask's bounding box: work there, with a margin that is outside
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    part = np.ones((y1 - y0 + 2, x1 - x0 + 2), bool)
    part[1:-1, 1:-1] = ~mask[y0:y1, x0:x1]
    rows, starts, stops, root = _components(part, connectivity=4)
    # the margin is one component and holds the first run: every other one is a hole
    hole = root != 0
    if hole.any():
        filled = np.zeros(part.shape, bool)
        _paint(filled, rows[hole], starts[hole], stops[hole], np.ones(int(hole.sum()), bool))
        out[y0:y1, x0:x1] |= filled[1:-1, 1:-1]
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2 radius + 1) square."""
    return _box_any(np.asarray(mask, bool), radius)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2 radius + 1) square (outside the image counts as True, so an
    object is not eaten where it touches the border)."""
    return ~_box_any(~np.asarray(mask, bool), radius)


def _box_any(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    out = mask.copy()
    for _ in range(2):  # rows, then columns: a square is separable
        acc = out.copy()
        for s in range(1, radius + 1):
            acc[s:] |= out[:-s]
            acc[:-s] |= out[s:]
        out = acc.T.copy()
    return out
