"""The index directory on disk: ``manifest.json`` plus the files it lists, written atomically.

Layout::

    indexes/fashion-mnist/
        manifest.json                 <- the commit point, replaced atomically (os.replace)
        .lock                         <- writers hold it (flock) for their load-change-save
        v20261129T051500-3f2a9c/      <- one generation of data files
            .simsearch-generation     <- marks a folder this index wrote (garbage collection)
            encoder.onnx  vectors.npy  index.faiss  items.npz  images.npy  ...

A save writes a new generation into a hidden staging folder, fsyncs it, renames it into place,
then swaps ``manifest.json`` in one ``os.replace``. A crash at any moment therefore leaves the old
manifest pointing at the old, complete files, or the new manifest pointing at the new ones. The
previous generation is kept (a reader that opened the old manifest a moment ago can still read
it); older generations are removed, and only folders this index wrote: anything else in the
directory is never touched.

An index directory is data only and may come from someone else: every name in its manifest must
be a plain file name inside one generation folder (no absolute path, no ``..``, no symlink), the
manifest's structure is checked and, from format 2 on, its own sha256 too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simsearch.errors import (
    IncompatibleIndexError,
    IndexCorruptError,
    IndexNotFoundError,
    IndexWriteError,
    SimsearchError,
)
from simsearch.vector_index import INDEX_TYPES

MANIFEST = "manifest.json"
LOCK = ".lock"
GENERATION_MARK = ".simsearch-generation"
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)  # 1: no manifest checksum
REQUIRED_KEYS = ("format_version", "metric", "embedding_dim", "count", "index", "model", "files")
ENCODER_FILES = ("encoder.onnx", "encoder.npz")
# What a generation folder and a file in it may be called: nothing that can leave the folder.
GENERATION_NAME = re.compile(r"v\d{8}T\d{6}-[0-9a-f]{6}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Existing:
    """A file of the current generation to carry over (hard link or copy), checked against the
    sha256 the manifest gives it: a damaged file is never signed into a new generation."""

    path: Path
    sha256: str


# A file to write: a function that writes to the given path, or an existing file to carry over.
FileSource = Callable[[Path], None] | Existing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content (canonical JSON, without its own checksum)."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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


def new_generation() -> str:
    return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S-") + secrets.token_hex(3)


def write_index(
    directory: Path, files: dict[str, FileSource], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write ``files`` as a new generation of ``directory``; commit ``manifest`` pointing at them.

    Takes the index's writer lock. ``manifest`` gets ``format_version``, its ``files`` entry (name
    -> path, sha256, bytes) and its own checksum filled in here. Returns the manifest as written.

    Raises IndexCorruptError when a carried-over file does not match its checksum, and
    IndexWriteError when the directory cannot be written (read-only, disk full, ...); in both
    cases the index on disk is unchanged and nothing is left behind.
    """
    for name in files:
        _check_file_name(directory, name)
    with locked(directory, create=True), _write_errors(directory):
        previous = _referenced_generations(directory)
        generation = new_generation()
        staging = directory / f".staging-{generation}"
        staging.mkdir()
        try:
            entries: dict[str, Any] = {}
            (staging / GENERATION_MARK).write_bytes(b"")
            for name, source in files.items():
                target = staging / name
                if isinstance(source, Existing):
                    _link_or_copy(source.path, target)
                else:
                    source(target)
                _fsync_file(target)
                digest = sha256_file(target)
                if isinstance(source, Existing) and digest != source.sha256:
                    raise IndexCorruptError(
                        f"{_shown(directory, source.path)}: sha256 does not match the manifest "
                        "(file changed?); not copied into a new version"
                    )
                entries[name] = {
                    "path": f"{generation}/{name}",
                    "sha256": digest,
                    "bytes": target.stat().st_size,
                }
            _fsync_dir(staging)
            os.rename(staging, directory / generation)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(directory)

        manifest = {**manifest, "format_version": FORMAT_VERSION, "files": entries}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        tmp = directory / f".manifest-{generation}.tmp"
        try:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            _fsync_file(tmp)
            os.replace(tmp, directory / MANIFEST)  # the commit point
        except BaseException:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(directory / generation, ignore_errors=True)
            raise
        _fsync_dir(directory)
        _collect_garbage(directory, keep={generation, *previous}, ours=previous)
    return manifest


@contextmanager
def _write_errors(directory: Path) -> Iterator[None]:
    """OSError while writing an index -> IndexWriteError (one line, no traceback)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, SimsearchError):
            raise
        raise IndexWriteError(_os_error_text(directory, exc)) from None


def _os_error_text(directory: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return f"cannot write the index at {directory}: {reason}; the index was not changed"


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link shares the bytes of an unchanged file (the encoder) between generations.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _shown(directory: Path, path: Path) -> str:
    """A path for messages: relative to the index directory when inside it."""
    try:
        return str(Path(directory.name) / path.relative_to(directory))
    except ValueError:
        return path.name


def _referenced_generations(directory: Path) -> set[str]:
    """The generation the current manifest uses (empty when there is no valid one)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        found = {entry["path"].split("/")[0] for entry in manifest["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {name for name in found if GENERATION_NAME.fullmatch(name)}


def _collect_garbage(directory: Path, keep: set[str], ours: set[str]) -> None:
    """Remove old generations and leftovers of crashed writers (the caller holds the lock).

    Only folders this index wrote go: a generation name and, inside, the generation mark (or the
    generation a manifest of this index used, for indexes written before the mark existed).
    """
    for child in directory.iterdir():
        name = child.name
        try:
            mode = child.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            continue
        if GENERATION_NAME.fullmatch(name) and stat.S_ISDIR(mode) and name not in keep:
            if name in ours or (child / GENERATION_MARK).is_file():
                shutil.rmtree(child, ignore_errors=True)
        elif name.startswith(".staging-v") and stat.S_ISDIR(mode):
            if GENERATION_NAME.fullmatch(name.removeprefix(".staging-")):
                shutil.rmtree(child, ignore_errors=True)  # no writer but us holds the lock
        elif name.startswith(".manifest-v") and name.endswith(".tmp") and stat.S_ISREG(mode):
            child.unlink(missing_ok=True)


def check_target(directory: Path, allow_foreign: bool) -> None:
    """Refuse to build into a non-empty folder that holds no index (unless told otherwise).

    Raises IndexExistsError naming the folder.
    """
    from simsearch.errors import IndexExistsError

    if has_index(directory) or not directory.exists():
        return
    if not directory.is_dir():
        raise IndexExistsError(f"{directory} exists and is not a directory")
    foreign = [p.name for p in directory.iterdir() if p.name != LOCK]
    if foreign and not allow_foreign:
        raise IndexExistsError(
            f"{directory} is not empty and holds no index ({len(foreign)} other entries, e.g. "
            f"{sorted(foreign)[0]!r}); choose a new folder, or use --force to build into it "
            "(nothing of yours in it is touched)"
        )


# ---------------------------------------------------------------------- reading


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; raise a typed error naming what is wrong.

    Checks the JSON, its own checksum (format 2), the structure the rest of simsearch relies on,
    and that every file it lists is a plain name inside one generation folder.
    """
    if not directory.exists():
        raise IndexNotFoundError(
            f"no index at {directory} "
            f"(build one with: simsearch build-index --index-dir {directory})"
        )
    if not directory.is_dir():
        raise IndexNotFoundError(f"{directory} is not a directory")
    path = directory / MANIFEST
    if path.is_symlink():
        raise IndexCorruptError(f"{path}: is a symbolic link; an index holds plain files only")
    if not path.is_file():
        raise IndexNotFoundError(f"no index at {directory}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise IndexCorruptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path}: not a JSON object")
    version = manifest.get("format_version")
    if type(version) is not int or version not in SUPPORTED_FORMATS:
        raise IncompatibleIndexError(
            f"{directory}: index format_version {version!r} is not supported by this simsearch "
            f"(supports {', '.join(map(str, SUPPORTED_FORMATS))}); rebuild it with "
            f"simsearch build-index --force"
        )
    if version >= 2 and manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise IndexCorruptError(f"{path}: its checksum does not match its content (changed?)")
    _check_structure(path, manifest)
    return manifest


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_structure(path: Path, m: dict[str, Any]) -> None:
    """The manifest has the keys and types the rest of simsearch reads."""
    missing = [key for key in REQUIRED_KEYS if key not in m]
    if missing:
        raise IndexCorruptError(f"{path}: missing {', '.join(missing)}")

    def bad(what: str) -> IndexCorruptError:
        return IndexCorruptError(f"{path}: {what}")

    if m["metric"] != "cosine":
        raise IncompatibleIndexError(f"{path}: metric {m['metric']!r}, expected 'cosine'")
    if not _is_int(m["embedding_dim"], 1, 1 << 16):
        raise bad(f"embedding_dim {m['embedding_dim']!r} is not a positive integer")
    if not _is_int(m["count"], 0, 1 << 40):
        raise bad(f"count {m['count']!r} is not a non-negative integer")
    index = m["index"]
    if not isinstance(index, dict) or index.get("type") not in INDEX_TYPES:
        raise bad(f"index.type must be one of {', '.join(INDEX_TYPES)}")
    shards = index.get("shards")
    if shards is not None and not (
        isinstance(shards, list)
        and 1 <= len(shards) <= 4096
        and all(_is_int(n, 0, 1 << 40) for n in shards)
    ):
        raise bad("index.shards must list the item count of each shard")
    params = index.get("params", {})
    if not isinstance(params, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in params.values()
    ):
        raise bad("index.params must map names to numbers")
    model = m["model"]
    if not isinstance(model, dict):
        raise bad("model is not an object")
    if model.get("encoder_file", "encoder.onnx") not in ENCODER_FILES:
        raise bad(f"model.encoder_file must be one of {', '.join(ENCODER_FILES)}")
    for keys, types in _OPTIONAL_FIELDS.items():
        value: Any = m
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise bad(f"{'.'.join(keys)} has the wrong type ({type(value).__name__})")
    names = m.get("catalog", {}).get("label_names", [])
    if not all(isinstance(n, str) for n in names):
        raise bad("catalog.label_names must be a list of strings")
    skipped = m.get("catalog", {}).get("skipped", [])
    if not all(
        isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in skipped
    ):
        raise bad("catalog.skipped must be a list of {path, error} objects")
    if not all(isinstance(v, str | None) for v in m.get("versions", {}).values()):
        raise bad("versions must map names to version strings")
    _check_files(path, m["files"])


_NUMBER = (int, float)
# Fields read by simsearch when present, and the types they must have.
_OPTIONAL_FIELDS: dict[tuple[str, ...], tuple[type, ...]] = {
    ("catalog",): (dict,),
    ("catalog", "source"): (str,),
    ("catalog", "split"): (str,),
    ("catalog", "path"): (str,),
    ("catalog", "limit"): (int, type(None)),
    ("catalog", "label_names"): (list,),
    ("catalog", "skipped"): (list,),
    ("catalog", "item_images"): (bool,),
    ("model", "model"): (str,),
    ("model", "code_size"): (int,),
    ("model", "epochs_run"): (int,),
    ("model", "train_seconds"): _NUMBER,
    ("model", "final_val_loss"): (*_NUMBER, type(None)),
    ("model", "encoder_sha256"): (str,),
    ("build",): (dict,),
    ("build", "labels_from_folders"): (bool,),
    ("index", "tombstones"): (int,),
    ("versions",): (dict,),
    ("created_at",): (str,),
    ("updated_at",): (str,),
}


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _check_files(path: Path, files: Any) -> None:
    if not isinstance(files, dict) or not files:
        raise IndexCorruptError(f"{path}: files must be a non-empty object")
    generations = set()
    for name, entry in files.items():
        _check_file_name(path.parent, name)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise IndexCorruptError(f"{path}: file {name!r} has no path")
        generation, _, file_name = entry["path"].partition("/")
        if not GENERATION_NAME.fullmatch(generation) or file_name != name:
            raise IndexCorruptError(
                f"{path}: unsafe path {entry['path']!r} for {name!r} "
                "(a file must be <generation folder>/<its name>)"
            )
        if not isinstance(entry.get("sha256"), str) or not SHA256.fullmatch(entry["sha256"]):
            raise IndexCorruptError(f"{path}: file {name!r} has no valid sha256")
        if not _is_int(entry.get("bytes"), 0, 1 << 50):
            raise IndexCorruptError(f"{path}: file {name!r} has no valid size")
        generations.add(generation)
    if len(generations) != 1:
        raise IndexCorruptError(f"{path}: files are spread over {len(generations)} folders")


def _check_file_name(directory: Path, name: Any) -> None:
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or name == GENERATION_MARK:
        raise IndexCorruptError(
            f"{directory / MANIFEST}: unsafe file name {name!r} (a plain file name is required)"
        )


def file_path(directory: Path, manifest: dict[str, Any], name: str, verify: bool = True) -> Path:
    """Path of the manifest's file ``name``, checked: a regular file (not a symlink) inside the
    generation folder and, with ``verify``, its size and sha256."""
    entry = manifest["files"].get(name)
    if not isinstance(entry, dict) or "path" not in entry:
        raise IndexCorruptError(f"{directory / MANIFEST}: lists no file {name!r}")
    relative = Path(entry["path"])
    if relative.is_absolute() or ".." in relative.parts or len(relative.parts) != 2:
        raise IndexCorruptError(f"{directory / MANIFEST}: unsafe path {entry['path']!r}")
    generation = directory / relative.parts[0]
    path = generation / relative.parts[1]
    for part, kind in ((generation, stat.S_ISDIR), (path, stat.S_ISREG)):
        try:
            mode = part.lstat().st_mode
        except OSError:
            raise IndexCorruptError(f"{path}: listed in the manifest but missing") from None
        if stat.S_ISLNK(mode) or not kind(mode):
            raise IndexCorruptError(
                f"{part}: not a plain {'folder' if kind is stat.S_ISDIR else 'file'} "
                "(an index holds no symbolic links)"
            )
    if verify:
        check_file(path, entry)
    return path


def check_file(path: Path, entry: dict[str, Any]) -> None:
    """``path`` has the size (unless None) and sha256 of its manifest entry; else
    IndexCorruptError."""
    size = path.stat().st_size
    if entry.get("bytes") is not None and size != entry.get("bytes"):
        raise IndexCorruptError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')}")
    if sha256_file(path) != entry.get("sha256"):
        raise IndexCorruptError(f"{path}: sha256 does not match the manifest (file changed?)")


def verify(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """Check the manifest and every file it lists. Returns (manifest, problems): one line per
    file that is missing, unsafe or changed (empty when all is well).

    Raises what :func:`read_manifest` raises when the manifest itself is wrong.
    """
    manifest = read_manifest(directory)
    problems = []
    for name in manifest["files"]:
        try:
            file_path(directory, manifest, name, verify=True)
        except IndexCorruptError as exc:
            problems.append(f"{name}: {exc}")
    return manifest, problems


# ---------------------------------------------------------------------- locking

_held: dict[Path, int] = {}  # directories whose lock this process holds, with a depth
_held_guard = threading.Lock()
_held_locks: dict[Path, threading.RLock] = {}


@contextmanager
def locked(
    directory: Path, create: bool = False, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Serialise writers of one index (load-change-save, a build) with an exclusive lock file.

    Re-entrant within a process (a save inside a held lock does not wait for itself); threads of
    one process take turns. Readers never take it: they see either the old or the new manifest.
    ``create`` makes the directory first (a new index); otherwise a directory without an index
    raises IndexNotFoundError. A directory that cannot be written raises IndexWriteError.
    ``on_wait`` is called once when another process holds the lock (before waiting for it).
    """
    import fcntl

    if create:
        with _write_errors(directory):
            directory.mkdir(parents=True, exist_ok=True)
    else:
        read_manifest(directory)  # a clear IndexNotFoundError rather than an empty new folder
    key = directory.resolve()
    with _held_guard:
        thread_lock = _held_locks.setdefault(key, threading.RLock())
    with thread_lock:
        if _held.get(key):
            _held[key] += 1
            try:
                yield
            finally:
                _held[key] -= 1
            return
        with _write_errors(directory):
            handle = open(directory / LOCK, "a")  # noqa: SIM115 - held until the end
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            _held[key] = 1
            try:
                yield
            finally:
                _held[key] = 0
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()
