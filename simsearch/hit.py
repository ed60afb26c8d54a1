"""One search result, and the fast way the query path makes many of them."""

from __future__ import annotations

import gc
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from itertools import repeat
from typing import Any

import numpy as np

ItemFields = tuple[str, int | None, str | None, str | None]  # id, label, label_name, source


@dataclass(frozen=True, slots=True)
class Hit:
    """A catalog item found for a query. ``distance == 1 - similarity`` (cosine), both rounded
    to 6 decimals (what float32 embeddings can tell apart): an item found by its own image has
    similarity 1.0 and distance 0.0. ``to_dict()`` gives the JSON object of ``query --json``."""

    rank: int  # 1 = most similar
    id: str
    label: int | None
    label_name: str | None
    similarity: float
    distance: float
    source: str | None  # file path for items that came from a folder catalog

    @classmethod
    def make(
        cls,
        rank: int,
        id: str,
        label: int | None,
        label_name: str | None,
        similarity: float,
        distance: float,
        source: str | None,
    ) -> Hit:
        """The same Hit as ``Hit(...)``, built faster (see :func:`ranked_hits`)."""
        return ranked_hits([((id, label, label_name, source), similarity, distance)], rank)[0]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (JSON-ready: ``json.dumps(hit.to_dict())``), in field order."""
        return asdict(self)


# Each slot's own setter, in field order: it fills a new Hit without going through the frozen
# class's ``__setattr__`` (which refuses), and costs a fraction of ``Hit(...)``.
_SETTERS = tuple(getattr(Hit, f.name).__set__ for f in fields(Hit))


def ranked_hits(
    results: Iterable[tuple[ItemFields, float, float]], first_rank: int = 1
) -> list[Hit]:
    """One Hit per (item fields, similarity, distance), ranked from ``first_rank`` in order.

    Equal to ``Hit(...)`` in every way (fields, equality, hash, repr, pickling).
    """
    set_rank, set_id, set_label, set_name, set_similarity, set_distance, set_source = _SETTERS
    new = object.__new__
    hits = []
    for rank, ((item_id, label, label_name, source), similarity, distance) in enumerate(
        results, first_rank
    ):
        hit = new(Hit)
        set_rank(hit, rank)
        set_id(hit, item_id)
        set_label(hit, label)
        set_name(hit, label_name)
        set_similarity(hit, similarity)
        set_distance(hit, distance)
        set_source(hit, source)
        hits.append(hit)
    return hits


def hits_from_columns(
    ranks: Sequence[int],
    ids: Sequence[str],
    labels: Sequence[int | None],
    label_names: Sequence[str | None],
    similarities: Sequence[float],
    distances: Sequence[float],
    sources: Sequence[str | None],
) -> list[Hit]:
    """One Hit per position of the equally long columns: what :func:`ranked_hits` makes, with
    the loops in C (``map`` over each slot's setter), about a third of its cost. A batch query
    makes one Hit per result."""
    hits = list(map(object.__new__, repeat(Hit, len(ids))))
    columns = (ranks, ids, labels, label_names, similarities, distances, sources)
    for setter, column in zip(_SETTERS, columns, strict=True):
        deque(map(setter, hits, column), maxlen=0)  # (deque: runs the map, keeps nothing)
    return hits


class ItemColumns:
    """The Python objects Hits show for catalog rows (id, label, label name, source), made
    once per row when a query first returns it: converting a catalog of millions whole would
    take seconds, while a batch's results come from a fraction of it."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> None:
        self._ids, self._labels, self._sources = ids, labels, sources
        self._lock = threading.Lock()  # queries in several threads may fill the same rows
        self._made: np.ndarray | None = None  # per row: its objects are in the columns
        self._columns: tuple[np.ndarray, ...] = ()

    def take(
        self, rows: np.ndarray, label_names: Sequence[str]
    ) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """Catalog ``rows`` (1-d, none -1) -> lists of their ids, labels (None: unlabelled),
        label names (None: unlabelled or no name) and sources (None: none)."""
        with self._lock:
            if self._made is None:
                self._made = np.zeros(len(self._ids), bool)
                self._columns = tuple(np.full(len(self._ids), None, object) for _ in range(4))
            missing = rows[~self._made[rows]]
            if len(missing):
                self._make(np.unique(missing), label_names)
            ids, labels, names, sources = (column[rows].tolist() for column in self._columns)
        return ids, labels, names, sources

    def _make(self, rows: np.ndarray, label_names: Sequence[str]) -> None:
        assert self._made is not None
        labels = [None if label < 0 else label for label in self._labels[rows].tolist()]
        names = [
            None if label is None or label >= len(label_names) else label_names[label]
            for label in labels
        ]
        ids = [str(item_id) for item_id in self._ids[rows].tolist()]
        sources = [str(source) or None for source in self._sources[rows].tolist()]
        for column, values in zip(self._columns, (ids, labels, names, sources), strict=True):
            column[rows] = values
        self._made[rows] = True


@contextmanager
def many_objects() -> Iterator[None]:
    """No cyclic garbage collection while the block makes many small objects (the Hits of a
    batch): every few thousand new objects the collector would walk all those alive, about
    40% of the time of building a batch's Hits, and find nothing to free (Hits hold strings
    and numbers). Collection resumes after, unless it was off before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
