"""The index directory on disk: ``manifest.json`` plus the files it lists, written atomically.

Layout::

    indexes/fashion-mnist/
        manifest.json                 <- the commit point, replaced atomically (os.replace)
        v20261129T051500-3f2a/        <- one generation of data files
            encoder.onnx  vectors.npy  index.faiss  items.npz  images.npy  ...

A save writes a new generation into a hidden staging folder, fsyncs it, renames it into place,
then swaps ``manifest.json`` in one ``os.replace``. A crash at any moment therefore leaves the old
manifest pointing at the old, complete files, or the new manifest pointing at the new ones. The
previous generation is kept (a reader that opened the old manifest a moment ago can still read
it); older ones are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simsearch.errors import IncompatibleIndexError, IndexCorruptError, IndexNotFoundError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SUPPORTED_FORMATS = (1,)
REQUIRED_KEYS = ("format_version", "metric", "embedding_dim", "count", "index", "model", "files")
STALE_STAGING_SECONDS = 3600

# A file to write: a function that writes to the given path, or an existing file to link/copy.
FileSource = Callable[[Path], None] | Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_index(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def write_index(
    directory: Path, files: dict[str, FileSource], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write ``files`` as a new generation of ``directory``; commit ``manifest`` pointing at them.

    ``manifest`` gets its ``files`` entry (name -> path, sha256, bytes) filled in here. Returns the
    manifest as written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    previous = _referenced_generations(directory)
    generation = datetime.now(UTC).strftime("v%Y%m%dT%H%M%S-") + secrets.token_hex(3)
    staging = directory / f".staging-{generation}"
    staging.mkdir()
    try:
        entries: dict[str, Any] = {}
        for name, source in files.items():
            target = staging / name
            if isinstance(source, Path):
                _link_or_copy(source, target)
            else:
                source(target)
            _fsync_file(target)
            entries[name] = {
                "path": f"{generation}/{name}",
                "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
            }
        _fsync_dir(staging)
        os.rename(staging, directory / generation)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(directory)

    manifest = {**manifest, "files": entries}
    tmp = directory / f".manifest-{generation}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_file(tmp)
    os.replace(tmp, directory / MANIFEST)  # the commit point
    _fsync_dir(directory)
    _collect_garbage(directory, keep={generation, *previous})
    return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link shares the bytes of an unchanged file (the encoder) between generations.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _referenced_generations(directory: Path) -> set[str]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return {entry["path"].split("/")[0] for entry in manifest["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _collect_garbage(directory: Path, keep: set[str]) -> None:
    """Remove generations other than ``keep`` and staging leftovers of crashed writers."""
    now = time.time()
    for child in directory.iterdir():
        name = child.name
        if name.startswith("v") and child.is_dir() and name not in keep and "-" in name:
            shutil.rmtree(child, ignore_errors=True)
        elif name.startswith((".staging-", ".manifest-")) and (
            now - child.stat().st_mtime > STALE_STAGING_SECONDS  # a young one may be in use
        ):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; raise a typed error naming what is wrong."""
    if not directory.exists():
        raise IndexNotFoundError(
            f"no index at {directory} "
            f"(build one with: simsearch build-index --index-dir {directory})"
        )
    if not directory.is_dir():
        raise IndexNotFoundError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexNotFoundError(f"no index at {directory}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path}: not a JSON object")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMATS:
        raise IncompatibleIndexError(
            f"{directory}: index format_version {version!r} is not supported by this simsearch "
            f"(supports {', '.join(map(str, SUPPORTED_FORMATS))}); rebuild it with "
            f"simsearch build-index --force"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise IndexCorruptError(f"{path}: missing {', '.join(missing)}")
    if manifest["metric"] != "cosine":
        raise IncompatibleIndexError(f"{path}: metric {manifest['metric']!r}, expected 'cosine'")
    return manifest


def file_path(directory: Path, manifest: dict[str, Any], name: str, verify: bool = True) -> Path:
    """Absolute path of the manifest's file ``name``, checked against its size and sha256."""
    entry = manifest["files"].get(name)
    if not isinstance(entry, dict) or "path" not in entry:
        raise IndexCorruptError(f"{directory / MANIFEST}: lists no file {name!r}")
    relative = Path(entry["path"])
    if relative.is_absolute() or ".." in relative.parts:
        raise IndexCorruptError(f"{directory / MANIFEST}: unsafe path {entry['path']!r}")
    path = directory / relative
    if not path.is_file():
        raise IndexCorruptError(f"{path}: listed in the manifest but missing")
    if verify:
        if path.stat().st_size != entry.get("bytes"):
            raise IndexCorruptError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise IndexCorruptError(f"{path}: sha256 does not match the manifest (file changed?)")
    return path


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one index (load-change-save) with an exclusive lock file.

    Readers never take it: they see either the old or the new manifest.
    """
    import fcntl

    read_manifest(directory)  # a clear IndexNotFoundError rather than an empty new folder
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
