"""Figures: query grids, embedding maps, reconstructions and training curves are real PNGs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import figures
from simsearch.cli import app
from simsearch.errors import ConfigError, OutputError
from simsearch.figures import drawing

runner = CliRunner()


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """``path`` is a valid PNG of ``size`` with real content; returns its RGB pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.size == size
        rgb = np.asarray(image.convert("RGB"))
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 20, "the figure is (nearly) blank"
    assert rgb.std() > 10
    return rgb


def assert_one_line_error(result: object, fragment: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    err = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert fragment in err[0], err[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


# ---------------------------------------------------------------- query --grid


def test_query_grid_png(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    plain = run("query", item_png, "--index-dir", pca_index_dir, "-k", "3")
    result = run("query", item_png, "--index-dir", pca_index_dir, "-k", "3", "--grid", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout  # the table is unchanged
    assert f"wrote {out}" in result.stderr
    assert_png(out, figures.query_grid_size([3]))
    # 2 query cells + a gap + 3 neighbours, one line of cells
    assert figures.query_grid_size([3]) == (
        2 * figures.MARGIN + 5 * figures.CELL_W + figures.GAP,
        2 * figures.MARGIN + figures.CELL_H,
    )


def test_query_json_unaffected_by_grid(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    args = ("query", item_png, item_png, "--index-dir", pca_index_dir, "-k", "4", "--json")
    plain = run(*args)
    result = run(*args, "--grid", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 and all(len(r["results"]) == 4 for r in records)
    assert out.is_file()


def test_query_grid_one_block_per_query_and_wraps(
    pca_index_dir: Path, item_png: Path, tmp_path: Path
) -> None:
    out = tmp_path / "grid.png"
    result = run(
        "query", item_png, item_png, "--index-dir", pca_index_dir, "-k", "12", "--grid", out
    )
    assert result.exit_code == 0, result.output
    width, height = figures.query_grid_size([12, 12])
    assert width == 2 * figures.MARGIN + 12 * figures.CELL_W + figures.GAP  # 10 per line
    assert height == 2 * figures.MARGIN + 4 * figures.CELL_H + figures.SEPARATOR
    assert_png(out, (width, height))


def test_query_grid_skips_unusable_images(
    pca_index_dir: Path, item_png: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "grid.png"
    result = run("query", item_png, broken, "--index-dir", pca_index_dir, "-k", "2", "--grid", out)
    assert result.exit_code == 1
    assert "broken.png" in result.stderr
    assert_png(out, figures.query_grid_size([2]))


@pytest.mark.parametrize("where", ["missing-dir", "directory", "not-png"])
def test_query_grid_unwritable(
    pca_index_dir: Path, item_png: Path, tmp_path: Path, where: str
) -> None:
    out = {
        "missing-dir": tmp_path / "nope" / "grid.png",
        "directory": tmp_path,
        "not-png": tmp_path / "grid.jpg",
    }[where]
    result = run("query", item_png, "--index-dir", pca_index_dir, "--json", "--grid", out)
    assert_one_line_error(result, "cannot write")
    assert result.stdout == ""  # checked before any query ran


def test_grid_frames_show_whether_the_label_matches(pca_index_dir: Path, tmp_path: Path) -> None:
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(pca_index_dir)
    pixels = index.item_pixels("fashion-mnist/train/00007")
    ranked = index.query_pixels(pixels[None], 100)[0]
    own = ranked[0].label_name
    hits = ranked[:3] + [hit for hit in ranked if hit.label_name != own][:3]
    assert own is not None and len(hits) == 6
    row = figures.query_row(index, "item 7", pixels, pixels, hits, label=own)
    out = figures.query_grid([row], tmp_path / "grid.png")
    rgb = assert_png(out, figures.query_grid_size([6]))
    for i, hit in enumerate(hits):
        x = figures.MARGIN + 2 * figures.CELL_W + figures.GAP + figures.PAD + i * figures.CELL_W
        y = figures.MARGIN + figures.PAD + figures.TILE // 2
        expected = drawing.MATCH if hit.label_name == own else drawing.MISMATCH
        assert tuple(rgb[y, x - 2]) == Image.new("RGB", (1, 1), expected).getpixel((0, 0))


def test_query_grid_needs_rows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        figures.query_grid([], tmp_path / "grid.png")


# ---------------------------------------------------------------- map


@pytest.mark.parametrize(
    "method",
    [pytest.param("tsne", marks=pytest.mark.slow), "pca"],  # t-SNE: ~5 s
)
def test_map_png(pca_index_dir: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "map.png"
    result = run(
        "map",
        "--index-dir",
        pca_index_dir,
        "--out",
        out,
        "--method",
        method,
        "--sample",
        "150",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"wrote {out}: ") and " 150 items " in result.stdout
    assert_png(out, (1000, 800))


def test_map_thumbnails_and_sample(pca_index_dir: Path, tmp_path: Path) -> None:
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(pca_index_dir)
    with_thumbs = figures.embedding_map(index, tmp_path / "a.png", "pca", sample=100, seed=1)
    without = figures.embedding_map(
        index, tmp_path / "b.png", "pca", sample=100, thumbnails=False, seed=1
    )
    assert with_thumbs.points == without.points == 100
    assert with_thumbs.thumbnails > 5 and without.thumbnails == 0
    a, b = assert_png(tmp_path / "a.png", (1000, 800)), assert_png(tmp_path / "b.png", (1000, 800))
    assert not np.array_equal(a, b)
    again = figures.embedding_map(index, tmp_path / "c.png", "pca", sample=100, seed=1)
    assert np.array_equal(a, assert_png(again.path, (1000, 800)))  # seeded: repeatable


def test_map_progress_on_stderr(pca_index_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    result = run("map", "--index-dir", pca_index_dir, "--out", out, "--sample", "100")
    assert result.exit_code == 0, result.output
    assert "t-SNE of 100 of 400 items" in result.stderr
    assert result.stdout.splitlines() == [result.stdout.strip()]  # one result line


def test_map_unknown_method(pca_index_dir: Path, tmp_path: Path) -> None:
    result = run("map", "--index-dir", pca_index_dir, "--out", tmp_path / "m.png", "--method", "x")
    assert_one_line_error(result, "unknown --method 'x'")


def test_map_umap_not_installed(
    pca_index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    result = run(
        "map", "--index-dir", pca_index_dir, "--out", tmp_path / "m.png", "--method", "umap"
    )
    assert_one_line_error(result, "pip install umap-learn")
    assert not (tmp_path / "m.png").exists()


def test_map_unwritable(pca_index_dir: Path, tmp_path: Path) -> None:
    result = run("map", "--index-dir", pca_index_dir, "--out", tmp_path / "no" / "map.png")
    assert_one_line_error(result, "cannot write")


def test_map_too_small_sample(pca_index_dir: Path, tmp_path: Path) -> None:
    result = run("map", "--index-dir", pca_index_dir, "--out", tmp_path / "m.png", "--sample", "2")
    assert_one_line_error(result, "--sample")


def test_map_missing_index(tmp_path: Path) -> None:
    result = run("map", "--index-dir", tmp_path / "none", "--out", tmp_path / "m.png")
    assert_one_line_error(result, "none")


# ---------------------------------------------------------------- reconstruct


def test_reconstruct_pca_index(pca_index_dir: Path, tmp_path: Path) -> None:
    """A PCA index reconstructs with its own PCA; --compare-pca adds no duplicate row."""
    out = tmp_path / "recon.png"
    result = run("reconstruct", "--index-dir", pca_index_dir, "--out", out, "--compare-pca")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}\n"
    mse_lines = [line for line in result.stderr.splitlines() if "MSE" in line]
    assert len(mse_lines) == 1 and mse_lines[0].startswith("PCA model (16-d code): MSE ")
    assert 0 < float(mse_lines[0].split("MSE ")[1].split()[0]) < 0.1
    assert_png(out, figures.reconstruction_grid_size(10, 2))


def test_reconstruct_n(pca_index_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.png"
    result = run("reconstruct", "--index-dir", pca_index_dir, "--out", out, "--n", "3", "-q")
    assert result.exit_code == 0, result.output
    assert_png(out, figures.reconstruction_grid_size(3, 2))
    assert figures.reconstruction_grid_size(3, 2)[0] < figures.reconstruction_grid_size(10, 2)[0]


def test_reconstruct_picks_one_item_per_class(pca_index_dir: Path, tmp_path: Path) -> None:
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(pca_index_dir)
    result = figures.reconstruct(index, tmp_path / "r.png", n=10, seed=3)
    labels = [index.label_of(index.row_of(item)) for item in result.items]
    assert sorted(labels) == list(range(10))  # type: ignore[type-var]
    original, model = result.rows
    assert original.mse is None and model.mse is not None
    assert model.pixels.shape == (10, 28, 28) and 0.0 <= model.pixels.min() <= 1.0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--n", "0"], "--n"), (["--out", "{tmp}/no/recon.png"], "cannot write")],
)
def test_reconstruct_errors(
    pca_index_dir: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "recon.png")]
    result = run("reconstruct", "--index-dir", pca_index_dir, *args)
    assert_one_line_error(result, fragment)


# ---------------------------------------------------------------- training curve


def test_training_curve(tmp_path: Path) -> None:
    history = {"loss": [0.4, 0.3, 0.28], "val_loss": [0.35, 0.31, 0.32]}
    out = figures.training_curve(history, tmp_path / "curve.png", loss_name="loss (bce)")
    assert_png(out, (600, 360))
    assert_png(figures.training_curve({"loss": [0.5]}, tmp_path / "one.png"), (600, 360))
    with pytest.raises(ConfigError):
        figures.training_curve({"val_loss": [0.3]}, tmp_path / "none.png")
    with pytest.raises(OutputError):
        figures.training_curve(history, tmp_path / "missing" / "curve.png")
    assert figures.loss_label("bce") == "loss (binary cross-entropy)"
    assert figures.loss_label("mse") == "loss (mean squared error)"


# ---------------------------------------------------------------- a real autoencoder


@pytest.fixture(scope="module")
def dense_index_dir(tmp_path_factory: pytest.TempPathFactory, fake_data_dir: Path) -> Path:
    """A tiny real dense-autoencoder index (1 epoch on 300 fake images)."""
    from simsearch.build import BuildConfig, build_index
    from simsearch.training import TrainConfig

    directory = tmp_path_factory.mktemp("dense") / "index"
    config = BuildConfig(
        data_dir=str(fake_data_dir),
        limit=300,
        train=TrainConfig(model="dense", epochs=1, code_size=8),
    )
    build_index(config, directory)
    return directory


@pytest.mark.slow
def test_reconstruct_autoencoder_with_pca(dense_index_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.png"
    result = run(
        "reconstruct", "--index-dir", dense_index_dir, "--out", out, "--n", "6", "--compare-pca"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}\n"
    mse = {
        line.split(" (")[0]: float(line.split("MSE ")[1].split()[0])
        for line in result.stderr.splitlines()
        if "MSE" in line
    }
    assert set(mse) == {"autoencoder", "PCA"}
    assert all(0 < value < 0.5 for value in mse.values())
    assert_png(out, figures.reconstruction_grid_size(6, 3))


@pytest.mark.slow
def test_training_leaves_history_and_curve(dense_index_dir: Path) -> None:
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(dense_index_dir)
    history = json.loads(index.model_file("history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 1
    assert_png(index.model_file("training_curve.png"), (600, 360))
