"""Typed errors. Every failure a user can cause raises one of these; the CLI turns them into
one line on stderr (exit 1) and the server into a JSON 4xx."""

from __future__ import annotations


class SimsearchError(Exception):
    """Base class of every error simsearch raises on purpose."""


class InvalidImageError(SimsearchError, ValueError):
    """An image that cannot be read or used (missing, truncated, not an image, blank, too large)."""


class DatasetNotFoundError(SimsearchError, FileNotFoundError):
    """The Fashion-MNIST IDX files were found in none of the places searched."""


class DatasetCorruptError(SimsearchError):
    """An IDX file has a wrong magic number, wrong dimensions or a wrong length."""


class IndexNotFoundError(SimsearchError, FileNotFoundError):
    """No index at the given directory (no directory, or no manifest.json in it)."""


class IndexCorruptError(SimsearchError):
    """An index directory whose files do not match its manifest (checksum, size, shape)."""


class IncompatibleIndexError(SimsearchError):
    """An index written by an unsupported format version or with a mismatching configuration."""


class IndexChangedError(SimsearchError):
    """The index on disk changed since it was loaded (another writer saved it): saving would
    lose that change. Load it again and redo the change."""


class IndexWriteError(SimsearchError, OSError):
    """An index directory that cannot be written (read-only, disk full, ...); the index on disk
    is unchanged."""


class IndexExistsError(SimsearchError, FileExistsError):
    """Refusing to overwrite an existing index without --force."""


class DuplicateIdError(SimsearchError, ValueError):
    """An item id that is already in the index."""


class ItemNotFoundError(SimsearchError, KeyError):
    """An item id that is not in the index."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "item not found"


class UnavailableError(SimsearchError):
    """A part of a distributed index that does not answer now (a shard restarting, its node
    gone, its file unreadable there): nothing partial is returned; retry in a moment."""


class ConfigError(SimsearchError, ValueError):
    """A configuration value that is out of range or inconsistent."""


class EvaluationError(SimsearchError, ValueError):
    """An index that the evaluation protocol cannot score (unlabelled or foreign catalog)."""


class MissingDependencyError(SimsearchError, ImportError):
    """An optional package a feature needs is not installed (the message says how to install it)."""


class OutputError(SimsearchError, OSError):
    """An output file (a figure, an exported image) that cannot be written."""


class ClusterError(SimsearchError, ConnectionError):
    """A Ray cluster that cannot be reached, or a distributed job that failed on it."""
