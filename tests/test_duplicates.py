"""Near-duplicate groups: the rule (complete linkage over a k-NN graph), planted copies, the
--against modes, the JSON Lines / table / sheet outputs and bad input."""

from __future__ import annotations

import io
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex
from simsearch.cli import app
from simsearch.duplicates import (
    DEFAULT_THRESHOLD,
    NEIGHBOURS,
    SHEET_GROUPS,
    Duplicates,
    draw_sheet,
)
from simsearch.encoders import LinearEncoder, fit_pca, normalize
from simsearch.errors import ConfigError, IncompatibleIndexError
from simsearch.figures.sheets import sheet_size
from tests.fakedata import make_images

runner = CliRunner()
ITEM = "fashion-mnist/train/00007"  # its nearest other item in the fake index: similarity 0.95
V1_INDEX = Path(__file__).parent / "indices" / "v1"  # a PCA index over other data: another model


def noisy_copy(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image with up to +-3 grey levels of noise on the object (the background stays 0)."""
    noise = np.random.default_rng(seed).integers(-3, 4, pixels.shape)
    return np.where(pixels > 0, np.clip(pixels.astype(int) + noise, 1, 255), 0).astype(np.uint8)


def in_memory_index(
    images: np.ndarray, vectors: np.ndarray | None = None, kind: str = "flat"
) -> SearchIndex:
    """An index of ``images`` with a PCA-16 encoder fitted on them (or the given vectors)."""
    mean, components = fit_pca(images, 16)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, components=components)
    encoder = LinearEncoder(Path("encoder.npz"), buffer.getvalue())
    if vectors is None:
        vectors = normalize(encoder.encode(images))
    n = len(images)
    manifest = {
        "embedding_dim": 16,
        "catalog": {"label_names": []},
        "index": {"type": kind, "params": {"M": 8, "efSearch": 16} if kind == "hnsw" else {}},
        "model": {"model": "pca", "encoder_file": "encoder.npz"},
    }
    return SearchIndex(
        encoder=encoder,
        encoder_file=Path("encoder.npz"),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        ids=np.asarray([f"item/{i:04d}" for i in range(n)]),
        labels=np.full(n, -1, np.int16),
        sources=np.asarray([""] * n),
        images=images,
        manifest=manifest,
    )


def group_of(result: Duplicates) -> dict[int, int]:
    """Row -> group number."""
    return {row: group.group for group in result for row in group.rows}


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    """The fake PCA index plus two noisy copies of ITEM, saved."""
    index = SearchIndex.load(pca_index_dir)
    pixels = index.item_pixels(ITEM)
    copies = np.stack([noisy_copy(pixels, 1), noisy_copy(pixels, 2)])
    index.add_pixels(copies, ["planted/copy-1", "planted/copy-2"])
    directory = tmp_path_factory.mktemp("planted") / "index"
    index.save(directory)
    return directory


# ---------------------------------------------------------------- the rule


def test_planted_copies_are_grouped_and_distinct_items_are_not(planted_dir: Path) -> None:
    index = SearchIndex.load(planted_dir)
    result = index.duplicates()
    assert result.threshold == DEFAULT_THRESHOLD
    groups = [g for g in result if ITEM in g.ids]
    assert len(groups) == 1
    assert groups[0].ids == (ITEM, "planted/copy-1", "planted/copy-2")  # the earliest first
    assert all(s > 0.999 for s in groups[0].similarities)
    # Ground truth by brute force: an item with no other item at the threshold is in no group.
    sims = index.vectors @ index.vectors.T
    np.fill_diagonal(sims, -1)
    lonely = np.flatnonzero(sims.max(axis=1) < DEFAULT_THRESHOLD)
    assert len(lonely) > 300  # most of the fake catalog
    assert not set(lonely.tolist()) & set(group_of(result))


@pytest.mark.parametrize("threshold", [0.999, DEFAULT_THRESHOLD, 0.99, 0.9, 0.5])
def test_groups_follow_complete_linkage(pca_index_dir: Path, threshold: float) -> None:
    """Every two members are at the threshold; every pair at the threshold left apart would
    break that rule if its two groups were merged."""
    index = SearchIndex.load(pca_index_dir)
    result = index.duplicates(threshold, exact=True)
    sims = index.vectors @ index.vectors.T
    members = {group.group: list(group.rows) for group in result}
    for rows in members.values():
        assert len(rows) >= 2 and sims[np.ix_(rows, rows)].min() >= threshold - 1e-6
    where = group_of(result)
    for i, j in zip(*np.nonzero(np.triu(sims >= threshold + 1e-6, k=1)), strict=True):
        gi, gj = where.get(int(i)), where.get(int(j))
        if gi is not None and gi == gj:
            continue
        # Left apart (an item alone counts as a group of one): merging must break the rule.
        merged = (members[gi] if gi is not None else [int(i)]) + (
            members[gj] if gj is not None else [int(j)]
        )
        assert sims[np.ix_(merged, merged)].min() < threshold


def test_a_chain_is_not_glued_into_one_group() -> None:
    """a~b (0.999) and b~c (0.995) but a, c at 0.9895: at 0.99 only {a, b} is a group."""
    angles = [0.0, np.arccos(0.999), np.arccos(0.999) + np.arccos(0.995), 1.5]
    vectors = np.zeros((4, 16), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    index = in_memory_index(make_images(4, seed=3)[0], vectors)
    result = index.duplicates(0.99)
    assert [g.rows for g in result] == [(0, 1)]
    assert result.groups[0].similarities == (1.0, 0.999)


def test_more_copies_than_neighbours_make_one_group() -> None:
    images = make_images(60, seed=4)[0]
    images[10:50] = images[10]  # 40 identical items, more than NEIGHBOURS
    assert NEIGHBOURS < 40
    for kind in ("flat", "hnsw"):
        result = in_memory_index(images, kind=kind).duplicates(0.9999)
        biggest = result.groups[0]
        assert biggest.rows == tuple(range(10, 50)) and biggest.group == 1
        assert set(biggest.similarities) == {1.0}


def test_order_and_fields(pca_index_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    result = index.duplicates(0.99)
    assert [g.group for g in result] == list(range(1, len(result) + 1))
    sizes = [len(g.ids) for g in result]
    assert sizes == sorted(sizes, reverse=True) and len(result) > 5
    for group in result:
        assert list(group.rows) == sorted(group.rows)  # the earliest item first
        assert group.ids == tuple(str(index.ids[r]) for r in group.rows)
        first = index.vectors[group.rows[0]]
        expected = [round(float(index.vectors[r] @ first), 6) for r in group.rows[1:]]
        assert group.similarities == (1.0, *expected)
        assert group.to_dict() == {
            "group": group.group,
            "ids": list(group.ids),
            "similarities": list(group.similarities),
        }
        assert group.origins is None


def test_exact_search_gives_what_the_index_search_gives() -> None:
    images = make_images(2000, seed=5)[0]
    images[1000:1010] = [noisy_copy(images[i], i) for i in range(10)]
    index = in_memory_index(images, kind="hnsw")
    fast, exact = index.duplicates(0.995), index.duplicates(0.995, exact=True)
    assert [g.ids for g in fast] == [g.ids for g in exact]
    where = group_of(exact)
    assert all(where.get(i) == where.get(1000 + i) is not None for i in range(10))


@pytest.mark.parametrize("threshold", [-1.01, 1.5, float("nan"), True, "0.9"])
def test_threshold_outside_the_range_is_refused(pca_index_dir: Path, threshold: object) -> None:
    index = SearchIndex.load(pca_index_dir)
    with pytest.raises(ConfigError, match="threshold"):
        index.duplicates(threshold)  # type: ignore[arg-type]


# ---------------------------------------------------------------- against another set


@pytest.fixture
def photo_folder(tmp_path: Path, pca_index_dir: Path) -> Path:
    """A folder: a noisy copy of ITEM (in a subfolder), an unrelated image, a broken file."""
    index = SearchIndex.load(pca_index_dir)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(noisy_copy(index.item_pixels(ITEM), 3)).save(folder / "sub" / "copy.png")
    yy, xx = np.mgrid[0:28, 0:28]
    ring = ((np.hypot(yy - 14, xx - 14) - 9) ** 2 < 4).astype(np.uint8) * 220
    Image.fromarray(ring).save(folder / "ring.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_against_a_folder(pca_index_dir: Path, photo_folder: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    result = index.duplicates(against=photo_folder)
    assert result.against_items == 2 and result.items == len(index)
    assert [s["path"] for s in result.skipped] == [str(photo_folder / "broken.png")]
    assert [g.to_dict() for g in result] == [
        {
            "group": 1,
            "ids": [ITEM, str(photo_folder / "sub" / "copy.png")],
            "similarities": [1.0, result.groups[0].similarities[1]],
            "origins": ["index", "against"],
        }
    ]
    assert result.groups[0].similarities[1] > 0.999
    exact = index.duplicates(against=photo_folder, exact=True)
    assert [g.to_dict() for g in exact] == [g.to_dict() for g in result]
    pixels = result.pixels(result.groups[0])
    assert pixels.shape == (2, 28, 28) and np.array_equal(pixels[0], index.item_pixels(ITEM))


def test_against_an_index_made_with_the_same_model(pca_index_dir: Path, planted_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    result = index.duplicates(against=planted_dir)  # the same items, and the planted copies
    assert result.against_items == len(index) + 2
    mine = next(g for g in result if g.ids[0] == ITEM)
    # ITEM's own copy in the other index, and both planted copies, are listed under it.
    assert mine.ids[:2] == (ITEM, ITEM) and len(mine.ids) == 4
    assert set(mine.ids[2:]) == {"planted/copy-1", "planted/copy-2"}
    assert mine.origins == ("index", "against", "against", "against")
    assert mine.similarities[1] == 1.0 and list(mine.similarities) == sorted(
        mine.similarities, reverse=True
    )
    planted = SearchIndex.load(planted_dir)
    assert np.array_equal(result.pixels(mine)[2], planted.item_pixels(mine.ids[2]))


def test_against_an_index_of_another_model_is_refused(pca_index_dir: Path) -> None:
    with pytest.raises(IncompatibleIndexError, match="another model"):
        SearchIndex.load(pca_index_dir).duplicates(against=V1_INDEX)


def test_against_one_image_file(pca_index_dir: Path, photo_folder: Path) -> None:
    copy = photo_folder / "sub" / "copy.png"
    result = SearchIndex.load(pca_index_dir).duplicates(against=copy)
    assert result.against_items == 1 and not result.skipped
    assert [g.ids for g in result] == [(ITEM, str(copy))]


def test_against_a_missing_path(pca_index_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        SearchIndex.load(pca_index_dir).duplicates(against=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        SearchIndex.load(pca_index_dir).duplicates(against=tmp_path / "empty")
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"not a JPEG")
    with pytest.raises(ConfigError, match=r"no usable images .* \(1 unreadable\)"):
        SearchIndex.load(pca_index_dir).duplicates(against=tmp_path / "empty")


def test_sheet_of_an_index_without_images(tmp_path: Path) -> None:
    images = make_images(30, seed=6)[0]
    images[5] = images[4]
    index = in_memory_index(images)
    index._version = index._version.__class__(  # the same index, its images left out
        index.vectors, index.ids, index.labels, index.sources, None, index.searcher
    )
    result = index.duplicates()
    assert len(result) >= 1
    with pytest.raises(ConfigError, match="no stored images"):
        draw_sheet(result, tmp_path / "sheet.png")


# ---------------------------------------------------------------- the command


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: object, fragment: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    err = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_cli_json_lines(planted_dir: Path) -> None:
    result = run("duplicates", "--index-dir", planted_dir, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [g.to_dict() for g in SearchIndex.load(planted_dir).duplicates()]
    assert records == expected and len(records) >= 1
    assert all(list(r) == ["group", "ids", "similarities"] for r in records)
    assert any(r["ids"] == [ITEM, "planted/copy-1", "planted/copy-2"] for r in records)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{len(records)} group(s), ")
    assert "at similarity >= 0.997 among 402 items" in summary


def test_cli_table_and_sheet(planted_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    args = ("--threshold", "0.99", "--sheet", sheet, "--sheet-groups", "5", "-q")
    result = run("duplicates", "--index-dir", planted_dir, *args)
    assert result.exit_code == 0, result.output
    groups = SearchIndex.load(planted_dir).duplicates(0.99).groups
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["group", "similarity", "id"]
    assert lines[1].split() == ["1", "first", groups[0].ids[0]]
    assert lines[2].split() == [f"{groups[0].similarities[1]:.5f}", groups[0].ids[1]]
    assert len(lines) == 1 + sum(len(g.ids) for g in groups)
    with Image.open(sheet) as image:
        assert image.size == sheet_size([len(g.ids) for g in groups[:5]])
    assert f"wrote {sheet}" in result.stderr


def test_cli_against_folder_and_index(
    pca_index_dir: Path, planted_dir: Path, photo_folder: Path, tmp_path: Path
) -> None:
    sheet = tmp_path / "against.png"
    args = ("--against", photo_folder, "--sheet", sheet, "-q")
    result = run("duplicates", "--index-dir", pca_index_dir, *args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["group", "similarity", "from", "id"]
    assert lines[1].split() == ["1", "first", "index", ITEM]
    assert lines[2].split()[1:] == ["against", str(photo_folder / "sub" / "copy.png")]
    assert f"skipped {photo_folder / 'broken.png'}: " in result.stderr
    assert f"among 400 items and 2 from {photo_folder} (" in result.stderr
    with Image.open(sheet) as image:
        assert image.size == sheet_size([2])

    result = run("duplicates", "--index-dir", pca_index_dir, "--against", planted_dir, "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["origins"][0] == "index" and set(r["origins"][1:]) == {"against"} for r in records)
    assert sum(len(r["ids"]) - 1 for r in records) == 402  # every other item sits under its match


def test_cli_no_groups(pca_index_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "none.png"
    result = run("duplicates", "--index-dir", pca_index_dir, "--threshold", "1", "--sheet", sheet)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no near-duplicates"
    assert "not written" in result.stderr and not sheet.exists()


def test_cli_bad_input(pca_index_dir: Path, tmp_path: Path) -> None:
    base = ("duplicates", "--index-dir", pca_index_dir)
    assert_one_line_error(run(*base, "--threshold", "1.5"), "between -1 and 1")
    assert_one_line_error(run(*base, "--threshold", "-2"), "between -1 and 1")
    assert_one_line_error(run(*base, "--against", tmp_path / "missing"), "no such file")
    assert_one_line_error(run(*base, "--against", V1_INDEX), "another model")
    assert_one_line_error(run(*base, "--sheet", tmp_path / "out.txt"), "PNG")
    assert_one_line_error(run(*base, "--sheet", tmp_path / "no" / "out.png"), "no such directory")
    assert_one_line_error(run("duplicates", "--index-dir", tmp_path / "none"), str(tmp_path))


def test_cli_sheet_from_an_index_whose_images_changed(pca_index_dir: Path, tmp_path: Path) -> None:
    """The images are checked before the search, not after it."""
    copy = tmp_path / "copy"
    shutil.copytree(pca_index_dir, copy)
    images = next(copy.glob("*/images.npy"))
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF
    images.write_bytes(bytes(data))
    result = run("duplicates", "--index-dir", copy, "--sheet", tmp_path / "s.png", "-q")
    assert_one_line_error(result, "sha256 does not match")
    assert "group" not in result.stdout  # type: ignore[attr-defined]


def test_cli_help_states_the_library_defaults() -> None:
    """The CLI spells its defaults out (its --help imports no numpy): they must stay these."""
    text = " ".join(run("duplicates", "--help").stdout.split())
    assert f"-1 to 1 [{DEFAULT_THRESHOLD}]" in text
    assert f"Groups drawn on the sheet [{SHEET_GROUPS}]" in text


def test_pairs_in_groups_are_near_duplicate_pairs(planted_dir: Path) -> None:
    """What a pipeline reads from the JSON: each listed pair is at the threshold."""
    index = SearchIndex.load(planted_dir)
    for group in index.duplicates(0.995):
        for i, j in combinations(group.rows, 2):
            assert float(index.vectors[i] @ index.vectors[j]) >= 0.995 - 1e-6
