"""Keeping an index current: add files and folders to a saved index (``simsearch add``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from simsearch.catalog import image_files
from simsearch.errors import ConfigError, InvalidImageError
from simsearch.images import preprocess
from simsearch.progress import Reporter
from simsearch.search_index import SearchIndex


@dataclass
class AddReport:
    added: int
    count: int
    skipped: list[str] = field(default_factory=list)  # one line per unusable file


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

    Unusable files are skipped and reported; duplicate ids refuse the whole addition
    (DuplicateIdError) and leave the index as it was. Saves atomically.
    """
    index = SearchIndex.load(directory)
    catalog = index.manifest.get("catalog", {})
    root = Path(catalog["path"]) if catalog.get("source") == "folder" else None
    labels_from_folders = bool(index.manifest.get("build", {}).get("labels_from_folders"))
    reporter = Reporter(quiet)

    pixels, ids, labels, sources, skipped = [], [], [], [], []
    files = expand(paths)
    if not files:
        raise ConfigError("no image files among the given paths")
    with reporter.task("reading images", total=len(files), unit="images") as advance:
        for file, _ in files:
            advance(1)
            try:
                pixels.append(preprocess(file))
            except InvalidImageError as exc:
                skipped.append(" ".join(str(exc).split()))
                continue
            item_id = item_id_for(file, root)
            ids.append(item_id)
            sources.append(str(file.resolve()))
            labels.append(_label(item_id, index, labels_from_folders and root is not None))
    if ids:
        import numpy as np

        index.add(np.stack(pixels), ids, labels, sources)
        index.manifest.setdefault("catalog", {})["label_names"] = index.label_names
        index.save(directory)
    return AddReport(len(ids), len(index), skipped)


def _label(item_id: str, index: SearchIndex, from_folders: bool) -> int | None:
    parts = item_id.split("/")
    if not from_folders or len(parts) < 2:
        return None
    if parts[0] not in index.label_names:
        index.label_names.append(parts[0])
    return index.label_names.index(parts[0])
