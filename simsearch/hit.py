"""One search result, and the fast way the query path makes many of them."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

ItemFields = tuple[str, int | None, str | None, str | None]  # id, label, label_name, source


@dataclass(frozen=True)
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


def ranked_hits(
    results: Iterable[tuple[ItemFields, float, float]], first_rank: int = 1
) -> list[Hit]:
    """One Hit per (item fields, similarity, distance), ranked from ``first_rank`` in order.

    Equal to ``Hit(...)`` in every way (fields, equality, hash, repr, pickling) at a third of
    the cost: the instance dict is set in one step instead of through the frozen class's
    ``__setattr__`` once per field. A batch query makes one Hit per result.
    """
    new, set_dict = object.__new__, object.__setattr__
    hits = []
    for rank, ((item_id, label, label_name, source), similarity, distance) in enumerate(
        results, first_rank
    ):
        hit = new(Hit)
        set_dict(
            hit,
            "__dict__",
            {
                "rank": rank,
                "id": item_id,
                "label": label,
                "label_name": label_name,
                "similarity": similarity,
                "distance": distance,
                "source": source,
            },
        )
        hits.append(hit)
    return hits


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
