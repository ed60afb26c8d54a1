"""One search result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """A catalog item found for a query. ``distance == 1 - similarity`` (cosine)."""

    rank: int  # 1 = most similar
    id: str
    label: int | None
    label_name: str | None
    similarity: float
    distance: float
    source: str | None  # file path for items that came from a folder catalog

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
