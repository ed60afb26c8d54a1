"""simsearch: image similarity search over learned autoencoder embeddings.

from simsearch import SearchIndex, Hit
index = SearchIndex.load("indexes/fashion-mnist")
hits = index.query("shoe.png", k=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simsearch.errors import (
    ConfigError,
    DatasetCorruptError,
    DatasetNotFoundError,
    DuplicateIdError,
    EvaluationError,
    IncompatibleIndexError,
    IndexChangedError,
    IndexCorruptError,
    IndexExistsError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidImageError,
    ItemNotFoundError,
    MissingDependencyError,
    OutputError,
    SimsearchError,
    UnavailableError,
)

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DuplicateIdError",
    "EvaluationError",
    "Hit",
    "IncompatibleIndexError",
    "IndexChangedError",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexNotFoundError",
    "IndexWriteError",
    "InvalidImageError",
    "ItemNotFoundError",
    "MissingDependencyError",
    "OutputError",
    "QueryResult",
    "SearchIndex",
    "SimsearchError",
    "UnavailableError",
    "__version__",
]

if TYPE_CHECKING:
    from simsearch.hit import Hit
    from simsearch.search_index import QueryResult, SearchIndex


def __getattr__(name: str) -> Any:
    # Lazy: `import simsearch` (and so the CLI's --help) does not pull in numpy, FAISS or ONNX.
    if name in ("SearchIndex", "QueryResult"):
        from simsearch import search_index

        return getattr(search_index, name)
    if name == "Hit":
        from simsearch.hit import Hit

        return Hit
    raise AttributeError(f"module 'simsearch' has no attribute {name!r}")
