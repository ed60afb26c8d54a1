"""Keeping an index current: add files and folders to a saved index, remove items by id."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simsearch import storage
from simsearch.catalog import image_files
from simsearch.errors import ConfigError, InvalidImageError
from simsearch.images import preprocess
from simsearch.progress import Reporter
from simsearch.search_index import SearchIndex


@dataclass
class AddReport:
    added: int
    count: int
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"} per file


def expand(paths: list[Path]) -> list[tuple[Path, Path | None]]:
    """Files to add, each with the folder argument it came from (None for a file argument)."""
    files: list[tuple[Path, Path | None]] = []
    for path in paths:
        if path.is_dir():
            files.extend((file, path) for file in image_files(path))
        else:
            files.append((path, None))  # a missing file is reported when it is read
    return files


def item_id_for(file: Path, catalog_root: Path | None) -> str:
    """Id of a new item: relative to the folder catalog when inside it, else the path as given."""
    if catalog_root is not None:
        try:
            return file.resolve().relative_to(catalog_root).as_posix()
        except ValueError:
            pass
    return Path(os.path.normpath(file)).as_posix()


def add_paths(directory: Path, paths: list[Path], quiet: bool = False) -> AddReport:
    """Add every image among ``paths`` (files or folders) to the index at ``directory``.

    Each file is preprocessed once, exactly as a query of it is, so an added file finds itself.
    Unusable files are skipped and listed (as ``build-index --catalog`` does, also in the
    manifest's ``catalog.skipped``); duplicate ids refuse the whole addition (DuplicateIdError)
    and leave the index as it was. Holds the index's writer lock; saves atomically.
    """
    reporter = Reporter(quiet)
    files = expand(paths)
    if not files:
        raise ConfigError("no image files among the given paths")
    with storage.locked(directory, on_wait=reporter.waiting_for_writer(directory)):
        index = SearchIndex.load(directory)
        catalog = index.manifest.get("catalog", {})
        root = Path(catalog["path"]) if catalog.get("source") == "folder" else None
        labels_from_folders = bool(index.manifest.get("build", {}).get("labels_from_folders"))
        pixels, ids, labels, sources = [], [], [], []
        skipped: list[dict[str, str]] = []
        with reporter.task("reading images", total=len(files), unit="images") as advance:
            for file, _ in files:
                advance(1)
                try:
                    pixels.append(preprocess(file))
                except InvalidImageError as exc:
                    skipped.append({"path": str(file), "error": " ".join(str(exc).split())})
                    continue
                item_id = item_id_for(file, root)
                ids.append(item_id)
                sources.append(str(file.resolve()))
                labels.append(_label(item_id, index, labels_from_folders and root is not None))
        if ids:
            index.add_pixels(np.stack(pixels), ids, labels, sources)
            if skipped:
                known = index.manifest.setdefault("catalog", {}).get("skipped") or []
                index.manifest["catalog"]["skipped"] = [*known, *skipped]
            index.save(directory)
    return AddReport(len(ids), len(index), skipped)


def remove_ids(directory: Path, ids: list[str]) -> int:
    """Remove items by id from the index at ``directory`` (all or nothing: an unknown id
    removes none); holds the writer lock, saves atomically. Returns the new item count."""
    with storage.locked(directory):
        index = SearchIndex.load(directory)
        index.remove(ids)
        index.save(directory)
    return len(index)


def _label(item_id: str, index: SearchIndex, from_folders: bool) -> int | None:
    parts = item_id.split("/")
    if not from_folders or len(parts) < 2:
        return None
    if parts[0] not in index.label_names:
        index.label_names.append(parts[0])
    return index.label_names.index(parts[0])
