"""Near-duplicate groups within an index, or between an index and another set of images.

The rule the groups follow:

1. **A k-NN graph, not all pairs.** Every item's ``NEIGHBOURS`` most similar other items whose
   cosine similarity is at least ``threshold`` are its edges. They come from the index's own
   search (exact for a flat index; for HNSW and IVF what every query gets, approximate), or with
   ``exact=True`` from an exact scan of the stored vectors (cost grows with the square of the
   catalog).
2. **Complete linkage.** Edges are taken from the most similar down; two groups merge only when
   every pair across them is at least ``threshold`` similar (checked on the stored vectors).
   So every two members of a group are near-duplicates of each other: a chain a~b~c with a and
   c apart never makes one group, and a low threshold cannot glue a class into a giant
   component. The price: of a chain, the closer pair is kept and the other edge is dropped.
3. **Output.** A group's first id is its earliest catalog item (the one to keep, say);
   ``similarities`` are each member's similarity to that first item (1.0 for itself). Groups
   come largest first, then by their weakest pair, most similar first; ``group`` numbers them
   from 1 in that order. Items without a near-duplicate are in no group.

With ``against`` (a folder of images, an image file or another index made with the same
model): each item of that set is matched to its most similar index item; a group is one index
item followed by the items of the other set matched to it at ``threshold`` or above, and
``origins`` says which set each member is from (``"index"`` or ``"against"``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simsearch import storage
from simsearch.errors import ConfigError, IncompatibleIndexError
from simsearch.progress import Reporter

if TYPE_CHECKING:
    from simsearch.figures.sheets import SheetBlock
    from simsearch.search_index import SearchIndex

# The least similarity of two near-duplicates under the default model: every pair of
# Fashion-MNIST images (train and test) within an RMS of 4 grey levels per pixel scores at least
# 0.9979 (scripts/bench_duplicates.py); a little below that, to allow for re-encoded copies.
DEFAULT_THRESHOLD = 0.997
NEIGHBOURS = 16  # edges looked for per item (the k of the k-NN graph)
SHEET_GROUPS = 20  # groups drawn on a contact sheet unless told otherwise
BLOCK = 4096  # items searched per step (progress, and bounded memory for the scores)
INDEX, AGAINST = "index", "against"


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-duplicate items: ``ids[0]`` first, ``similarities[i]`` of ``ids[i]`` to it.

    ``rows`` are the members' positions in their own set (catalog rows of the index, or
    positions in the ``against`` set); ``origins`` (None without ``against``) says which set
    each member is from. ``to_dict()`` is the JSON line of ``simsearch duplicates --json``.
    """

    group: int
    ids: tuple[str, ...]
    similarities: tuple[float, ...]
    rows: tuple[int, ...]
    origins: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "group": self.group,
            "ids": list(self.ids),
            "similarities": list(self.similarities),
        }
        if self.origins is not None:
            record["origins"] = list(self.origins)
        return record


@dataclass
class Duplicates:
    """The groups found, and what was compared. Iterating gives the groups.

    ``items``: index items compared; ``against_items``: items of the other set (None without
    one); ``skipped``: files of an ``against`` folder that could not be read, ``{"path",
    "error"}`` each; ``seconds``: the whole search.
    """

    groups: list[DuplicateGroup]
    threshold: float
    items: int
    against_items: int | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    index: SearchIndex | None = field(default=None, repr=False)
    # The other set's images: (m, 28, 28) uint8 from a folder, or the other index.
    against_images: np.ndarray | SearchIndex | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[DuplicateGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def pixels(self, group: DuplicateGroup) -> np.ndarray:
        """The members' (28, 28) uint8 images as the model saw them, (len(ids), 28, 28).
        Raises ConfigError when an index holds no images."""
        if self.index is None:
            raise ConfigError("these results hold no images")
        index_images = self.index.images
        other = self.against_images
        other_images = other if isinstance(other, np.ndarray) or other is None else other.images
        origins = group.origins or (INDEX,) * len(group.rows)
        tiles = []
        for row, origin in zip(group.rows, origins, strict=True):
            if origin == INDEX:
                tiles.append(index_images[row])
            elif other_images is not None:
                tiles.append(other_images[row])
        return np.stack(tiles) if tiles else np.zeros((0, 28, 28), np.uint8)


def check_threshold(threshold: float | None) -> float:
    """``threshold`` as a float in [-1, 1] (None: DEFAULT_THRESHOLD); else ConfigError."""
    if threshold is None:
        return DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise ConfigError(f"threshold must be a number between -1 and 1, got {threshold!r}")
    value = float(threshold)
    if not -1.0 <= value <= 1.0:  # also refuses NaN
        raise ConfigError(f"threshold must lie between -1 and 1 (cosine similarity), got {value}")
    return value


def find_duplicates(
    index: SearchIndex,
    threshold: float | None = None,
    *,
    against: SearchIndex | str | os.PathLike[str] | None = None,
    exact: bool = False,
    reporter: Reporter | None = None,
) -> Duplicates:
    """Near-duplicate groups of ``index`` (see the module's docstring for the rule).

    ``threshold``: least cosine similarity of two near-duplicates, in [-1, 1] (default
    DEFAULT_THRESHOLD, calibrated on the default model). ``against``: a folder of images
    (searched recursively; unreadable files skipped and listed in ``skipped``), one image file,
    an index directory or a loaded SearchIndex made with the same model.
    Raises ConfigError (bad threshold, missing path, no image files) or IncompatibleIndexError
    (an ``against`` index made with another model).
    """
    threshold = check_threshold(threshold)
    reporter = reporter or Reporter(quiet=True)
    started = time.perf_counter()
    if against is None:
        groups = _within(index, threshold, exact, reporter)
        result = Duplicates(groups, threshold, len(index), index=index)
    else:
        vectors, ids, images, skipped = _against_set(index, against, reporter)
        groups = _between(index, vectors, ids, threshold, exact, reporter)
        result = Duplicates(
            groups, threshold, len(index), len(ids), skipped, index=index, against_images=images
        )
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- within one index


def _within(
    index: SearchIndex, threshold: float, exact: bool, reporter: Reporter
) -> list[DuplicateGroup]:
    vectors = index.vectors
    a, b, sims = _edges(index, vectors, threshold, exact, reporter, exclude_self=True)
    ids = index.ids
    drafts = []
    for rows in _complete_linkage(vectors, a, b, sims, threshold):
        similarities = [1.0, *_rounded(vectors[rows[1:]] @ vectors[rows[0]])]
        weakest = float((vectors[rows] @ vectors[rows].T).min())
        group = DuplicateGroup(
            0, tuple(str(ids[r]) for r in rows), tuple(similarities), tuple(rows)
        )
        drafts.append((weakest, group))
    return _numbered(drafts)


def _edges(
    index: SearchIndex,
    queries: np.ndarray,
    threshold: float,
    exact: bool,
    reporter: Reporter,
    exclude_self: bool,
    k: int = NEIGHBOURS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-NN graph: (query rows, catalog rows, similarities), one entry per query and
    neighbour at ``threshold`` or above; with ``exclude_self`` each pair once (a < b)."""
    searcher: Any = None
    if exact:
        from simsearch.vector_index import VectorIndex

        searcher = VectorIndex.build(index.vectors, "flat", {})
    k = min(k + int(exclude_self), max(len(index), 1))
    parts_a, parts_b, parts_s = [], [], []
    with reporter.task("finding near-duplicates", total=len(queries), unit="items") as advance:
        for start in range(0, len(queries), BLOCK):
            block = queries[start : start + BLOCK]
            if searcher is not None:
                scores, rows = searcher.search(block, k)
            else:
                scores, rows = index.search(block, k, min_similarity=threshold)
            query_rows = np.repeat(np.arange(start, start + len(block)), rows.shape[1])
            keep = (rows.ravel() >= 0) & (scores.ravel() >= threshold)
            if exclude_self:
                keep &= rows.ravel() != query_rows
            parts_a.append(query_rows[keep])
            parts_b.append(rows.ravel()[keep])
            parts_s.append(scores.ravel()[keep])
            advance(len(block))
    a = np.concatenate(parts_a) if parts_a else np.zeros(0, np.int64)
    b = np.concatenate(parts_b) if parts_b else np.zeros(0, np.int64)
    s = np.concatenate(parts_s).astype(np.float32) if parts_s else np.zeros(0, np.float32)
    if exclude_self and len(a):  # a pair found from both sides counts once
        low, high = np.minimum(a, b), np.maximum(a, b)
        _, first = np.unique(low * max(len(index), 1) + high, return_index=True)
        a, b, s = low[first], high[first], s[first]
    return a.astype(np.int64), b.astype(np.int64), s


def _complete_linkage(
    vectors: np.ndarray, a: np.ndarray, b: np.ndarray, sims: np.ndarray, threshold: float
) -> list[list[int]]:
    """Groups (each sorted by row, of 2 or more) from edges taken most similar first; two
    groups merge only when every pair across them scores at least ``threshold``."""
    order = np.lexsort((b, a, -sims))  # most similar first; ties by rows (repeatable)
    root: dict[int, int] = {}  # row -> its group's key row (absent: a group of its own)
    members: dict[int, list[int]] = {}
    apart: set[tuple[int, int]] = set()  # group pairs that failed (stays true as they grow)
    for i, j in zip(a[order].tolist(), b[order].tolist(), strict=True):
        gi, gj = root.get(i, i), root.get(j, j)
        if gi == gj or (min(gi, gj), max(gi, gj)) in apart:
            continue
        mi, mj = members.get(gi, [gi]), members.get(gj, [gj])
        # Two single items: their edge is the check. Else every cross pair is compared.
        if len(mi) + len(mj) > 2 and float((vectors[mi] @ vectors[mj].T).min()) < threshold:
            apart.add((min(gi, gj), max(gi, gj)))
            continue
        if len(mi) < len(mj):
            gi, gj, mi, mj = gj, gi, mj, mi
        members[gi] = mi + mj
        members.pop(gj, None)
        for row in mj:
            root[row] = gi
    return [sorted(rows) for rows in members.values()]


# ---------------------------------------------------------------- between two sets


def _against_set(
    index: SearchIndex, against: SearchIndex | str | os.PathLike[str], reporter: Reporter
) -> tuple[np.ndarray, list[str], Any, list[dict[str, str]]]:
    """The other set: unit vectors (m, d), ids, its images (an array or the index), skipped."""
    from simsearch.search_index import SearchIndex

    if isinstance(against, SearchIndex):
        other = against
    else:
        path = Path(against)
        if not path.exists():
            raise ConfigError(f"against: {path}: no such file or directory")
        if not storage.has_index(path):
            return _folder_set(index, path, reporter)
        other = SearchIndex.load(path)
    if _model_digest(other) != _model_digest(index):
        where = f" at {other.directory}" if other.directory is not None else ""
        raise IncompatibleIndexError(
            f"the index{where} was made with another model (encoder sha256 differs): its "
            "vectors cannot be compared; give its folder of images instead"
        )
    return other.vectors, [str(i) for i in other.ids], other, []


def _folder_set(
    index: SearchIndex, path: Path, reporter: Reporter
) -> tuple[np.ndarray, list[str], np.ndarray, list[dict[str, str]]]:
    """A folder (recursively) or one image file, preprocessed and embedded like queries."""
    from simsearch.catalog import image_files, load_folder

    root, files = (path, image_files(path)) if path.is_dir() else (path.parent, [path])
    if not files:
        raise ConfigError(f"against: no image files under {path}")
    folder = load_folder(root, reporter=reporter, paths=files)
    if not folder.ids:
        raise ConfigError(f"against: no usable images under {path} ({len(files)} unreadable)")
    vectors = np.zeros((len(folder.pixels), index.dim), np.float32)
    with reporter.task("embedding", total=len(folder.pixels), unit="images") as advance:
        for start in range(0, len(folder.pixels), BLOCK):
            block = folder.pixels[start : start + BLOCK]
            vectors[start : start + len(block)] = index.embed_pixels(block)
            advance(len(block))
    return vectors, list(folder.sources), folder.pixels, folder.skipped


def _model_digest(index: SearchIndex) -> str:
    return hashlib.sha256(index.encoder.data).hexdigest()


def _between(
    index: SearchIndex,
    vectors: np.ndarray,
    ids: Sequence[str],
    threshold: float,
    exact: bool,
    reporter: Reporter,
) -> list[DuplicateGroup]:
    queries, matched, sims = _edges(index, vectors, threshold, exact, reporter, False, k=1)
    by_item: dict[int, list[tuple[int, float]]] = {}
    for query, row, sim in zip(queries.tolist(), matched.tolist(), sims.tolist(), strict=True):
        by_item.setdefault(row, []).append((query, sim))
    index_ids = index.ids
    drafts = []
    for row, found in by_item.items():
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        group = DuplicateGroup(
            0,
            (str(index_ids[row]), *(ids[q] for q, _ in found)),
            (1.0, *_rounded(np.asarray([s for _, s in found]))),
            (row, *(q for q, _ in found)),
            (INDEX, *(AGAINST for _ in found)),
        )
        drafts.append((min(s for _, s in found), group))
    return _numbered(drafts)


# ---------------------------------------------------------------- output


def _rounded(similarities: np.ndarray) -> list[float]:
    """Similarities as floats rounded to 6 decimals (what float32 vectors tell apart)."""
    return [round(float(s), 6) for s in np.clip(similarities, -1.0, 1.0)]


def _numbered(drafts: list[tuple[float, DuplicateGroup]]) -> list[DuplicateGroup]:
    """(weakest pair's similarity, group) -> the groups in output order, numbered from 1:
    largest first, then the most similar weakest pair, then by first row."""
    drafts.sort(key=lambda draft: (-len(draft[1].ids), -draft[0], draft[1].rows[0]))
    return [replace(group, group=number) for number, (_, group) in enumerate(drafts, start=1)]


def draw_sheet(result: Duplicates, out: str | os.PathLike[str], groups: int | None = None) -> Path:
    """The first ``groups`` groups (default SHEET_GROUPS) as a PNG contact sheet, one block
    each: the first item (framed), then the others captioned with their id and similarity to
    the first. Raises ConfigError (no groups; an index without images), OutputError."""
    from simsearch.figures import sheets

    groups = SHEET_GROUPS if groups is None else groups
    if groups < 1:
        raise ConfigError(f"groups to draw must be at least 1, got {groups}")
    blocks = [sheet_block(result, group) for group in result.groups[:groups]]
    return sheets.contact_sheet(blocks, out)


def sheet_block(result: Duplicates, group: DuplicateGroup) -> SheetBlock:
    """A group as one block of a contact sheet (see :func:`draw_sheet`)."""
    from simsearch.figures.sheets import SheetBlock

    origins = group.origins or ("",) * len(group.ids)
    captions = []
    for position, (item_id, similarity, origin) in enumerate(
        zip(group.ids, group.similarities, origins, strict=True)
    ):
        value = "first" if position == 0 else f"{similarity:.4f}"
        captions.append((item_id, f"{origin} {value}".strip()))
    title = f"group {group.group}\n{len(group.ids)} items"
    return SheetBlock(title, result.pixels(group), captions)
