"""Folder catalogs: every image under a directory, preprocessed like a query.

Ids are paths relative to the folder (``shoes/red/0001.jpg``), ``source`` is the file's path,
and with ``labels_from_folders`` the first folder level names the class. Files that cannot be
used are skipped and reported, never abort the build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simsearch.errors import ConfigError, InvalidImageError
from simsearch.images import preprocess
from simsearch.progress import Reporter

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass
class FolderCatalog:
    """Preprocessed pixels (n, 28, 28) uint8 with ids, labels (-1 = none) and sources."""

    pixels: np.ndarray
    ids: list[str]
    labels: np.ndarray
    sources: list[str]
    label_names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)


def image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted, hidden files and folders left out).

    A symbolic link to a file counts only when it points inside ``root``, and linked folders
    are not entered: a catalog never reads outside its folder (``/etc/...``).
    """
    root_real = root.resolve()
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_file() and _inside(path, root_real):
                files.append(path)
    return sorted(files)


def _inside(path: Path, root_real: Path) -> bool:
    """``path`` is a real entry under ``root_real`` once symbolic links are resolved."""
    if not path.is_symlink():
        return True
    try:
        return path.resolve(strict=True).is_relative_to(root_real)
    except (OSError, RuntimeError):  # a dangling or looping link
        return False


def folder_label_names(root: Path, files: list[Path]) -> list[str]:
    """The classes of a catalog labelled by folders: the first folder levels, sorted."""
    return sorted(
        {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    )


def folder_label(root: Path, path: Path, label_names: list[str]) -> int:
    """The label of ``path`` among ``label_names`` (its first folder level), -1 for none."""
    parts = path.relative_to(root).parts
    return label_names.index(parts[0]) if len(parts) > 1 and parts[0] in label_names else -1


def skipped_file(path: Path | str, exc: InvalidImageError) -> dict[str, str]:
    """How a file that cannot be used is listed (manifest ``catalog.skipped``)."""
    return {"path": str(path), "error": " ".join(str(exc).split())}


def load_folder(
    root: Path,
    labels_from_folders: bool = False,
    reporter: Reporter | None = None,
    paths: list[Path] | None = None,
) -> FolderCatalog:
    """Preprocess every image under ``root`` (or just ``paths``, which must lie under it)."""
    reporter = reporter or Reporter(quiet=True)
    if not root.is_dir():
        raise ConfigError(f"catalog folder {root} does not exist or is not a directory")
    files = image_files(root) if paths is None else paths
    label_names = folder_label_names(root, files) if labels_from_folders else []
    pixels, ids, labels, sources, skipped = [], [], [], [], []
    with reporter.task("reading images", total=len(files), unit="images") as advance:
        for path in files:
            try:
                pixels.append(preprocess(path))
            except InvalidImageError as exc:
                skipped.append(skipped_file(path, exc))
                advance(1)
                continue
            ids.append(path.relative_to(root).as_posix())
            sources.append(str(path))
            labels.append(folder_label(root, path, label_names))
            advance(1)
    if skipped:
        reporter.message(f"skipped {len(skipped)} unreadable file(s) (listed in the manifest)")
    stacked = np.stack(pixels) if pixels else np.zeros((0, 28, 28), np.uint8)
    return FolderCatalog(stacked, ids, np.asarray(labels, np.int16), sources, label_names, skipped)
