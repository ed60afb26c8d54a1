from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch.cli import app

runner = CliRunner()
HIT_FIELDS = ["rank", "id", "label", "label_name", "similarity", "distance", "source"]


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: object, fragment: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert not isinstance(result.exception, Exception) or isinstance(  # type: ignore[attr-defined]
        result.exception,
        SystemExit,  # type: ignore[attr-defined]
    )
    err = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert fragment in err[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_query_table(pca_index_dir: Path, item_png: Path) -> None:
    result = run("query", item_png, "--index-dir", pca_index_dir, "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"query: {item_png}"
    assert lines[1].split() == ["rank", "id", "label", "similarity", "distance"]
    first = lines[2].split()
    assert first[0] == "1" and first[1] == "fashion-mnist/train/00007"
    assert float(first[-1]) < 1e-4 and float(first[-2]) > 0.9999
    assert len(lines) == 5


def test_query_json_lines_format(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    shutil.copy(item_png, other)
    result = run("query", item_png, other, "--index-dir", pca_index_dir, "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["query"] for r in records] == [str(item_png), str(other)]
    for record in records:
        assert list(record) == ["query", "results"]
        results = record["results"]
        assert [r["rank"] for r in results] == [1, 2, 3, 4]
        for r in results:
            assert list(r) == HIT_FIELDS
            assert isinstance(r["id"], str) and r["id"].startswith("fashion-mnist/train/")
            assert isinstance(r["label"], int) and isinstance(r["label_name"], str)
            assert abs(r["distance"] - (1 - r["similarity"])) < 2e-6
            assert r["source"] is None
        assert results[0]["id"] == "fashion-mnist/train/00007"
        assert results[0]["distance"] < 1e-4
        sims = [r["similarity"] for r in results]
        assert sims == sorted(sims, reverse=True)


def test_bad_image_among_good_ones(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(item_png.read_bytes()[:40])
    result = run(
        "query", item_png, broken, item_png, "--index-dir", pca_index_dir, "--json", "-k", "1"
    )
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(r) for r in records] == [
        ["query", "results"],
        ["query", "error"],
        ["query", "results"],
    ]
    assert records[1]["query"] == str(broken) and "\n" not in records[1]["error"]
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated"])
def test_each_image_error_is_one_line_exit_1(
    pca_index_dir: Path, item_png: Path, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a picture")
    elif kind == "truncated":
        path.write_bytes(item_png.read_bytes()[:60])
    result = run("query", path, "--index-dir", pca_index_dir)
    assert_one_line_error(result, path.name)
    assert result.stdout == ""


def test_missing_index_dir(tmp_path: Path, item_png: Path) -> None:
    result = run("query", item_png, "--index-dir", tmp_path / "nowhere")
    assert_one_line_error(result, "no index at")


def test_index_dir_from_environment(
    pca_index_dir: Path, item_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMSEARCH_INDEX_DIR", str(pca_index_dir))
    result = run("query", item_png, "-k", "1", "--json")
    assert result.exit_code == 0 and "fashion-mnist/train/00007" in result.stdout


def test_incompatible_index(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(pca_index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run("query", item_png, "--index-dir", copy), "format_version")
    assert_one_line_error(run("info", "--index-dir", copy), "format_version")


def test_corrupt_index(pca_index_dir: Path, item_png: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bad"
    shutil.copytree(pca_index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / manifest["files"]["index.faiss"]["path"]).write_bytes(b"garbage")
    assert_one_line_error(run("query", item_png, "--index-dir", copy), "index.faiss")


def test_usage_errors_exit_2(pca_index_dir: Path, item_png: Path) -> None:
    assert run("query").exit_code == 2
    assert run("query", item_png, "-k", "0", "--index-dir", pca_index_dir).exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_info(pca_index_dir: Path) -> None:
    result = run("info", "--index-dir", pca_index_dir)
    assert result.exit_code == 0, result.output
    assert "400" in result.stdout and "cosine" in result.stdout and "pca" in result.stdout
    manifest = json.loads(run("info", "--index-dir", pca_index_dir, "--json").stdout)
    assert manifest["count"] == 400


def test_build_index_cli_and_force(fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "built"
    args = [
        "build-index",
        "--model",
        "pca",
        "--code-size",
        "8",
        "--limit",
        "60",
        "--data-dir",
        fake_data_dir,
        "--index-dir",
        target,
        "--quiet",
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(f"built {target}: 60 items")
    assert_one_line_error(run(*args), "--force")
    assert run(*args, "--force").exit_code == 0


def test_build_index_bad_options(fake_data_dir: Path, tmp_path: Path) -> None:
    base = ["build-index", "--data-dir", fake_data_dir, "--index-dir", tmp_path / "x", "-q"]
    assert_one_line_error(run(*base, "--model", "transformer"), "unknown --model")
    assert_one_line_error(run(*base, "--split", "validation"), "--split")
    assert_one_line_error(run(*base, "--data-dir", tmp_path / "nodata"), "lacks")
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_split_test_and_limit(fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "test-split"
    result = run(
        "build-index",
        "--model",
        "pca",
        "--code-size",
        "8",
        "--split",
        "test",
        "--data-dir",
        fake_data_dir,
        "--index-dir",
        target,
        "-q",
    )
    assert result.exit_code == 0, result.output
    from simsearch import SearchIndex

    index = SearchIndex.load(target)
    assert len(index) == 100 and index.ids[0] == "fashion-mnist/test/00000"
    img = tmp_path / "q.png"
    Image.fromarray(np.asarray(index.images[9])).save(img)
    out = json.loads(run("query", img, "--index-dir", target, "--json", "-k", "1").stdout)
    assert out["results"][0]["id"] == "fashion-mnist/test/00009"


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("build-index", "query", "info"):
        assert command in result.stdout


def test_build_index_trains_what_the_library_would(fake_data_dir: Path, tmp_path: Path) -> None:
    """build-index adds no training defaults of its own: the configuration it asks for is
    TrainConfig's with the options given, and the manifest records what was trained."""
    from dataclasses import asdict

    from simsearch.training import TrainConfig

    target = tmp_path / "built"
    args = ["build-index", "--model", "pca", "--code-size", "8", "--limit", "60"]
    result = run(*args, "--data-dir", fake_data_dir, "--index-dir", target, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((target / "manifest.json").read_text())
    asked = TrainConfig(model="pca", code_size=8)
    assert manifest["build"]["train"] == asdict(asked)
    trained = {k: manifest["model"][k] for k in asdict(asked)}
    assert trained == asdict(asked.effective())


@pytest.mark.slow
def test_rephotographed_catalog_items_find_themselves(
    conv_denoising_index_dir: Path, tmp_path: Path
) -> None:
    """Catalog items enlarged, tinted, dark on white, off centre, as JPEG: found via the CLI."""
    from PIL import ImageOps

    from simsearch import SearchIndex

    index = SearchIndex.load(conv_denoising_index_dir)
    paths, expected = [], []
    for row in (3, 250, 1234):
        item = Image.fromarray(np.asarray(index.images[row]), mode="L")
        photo = ImageOps.invert(ImageOps.colorize(item, black=(0, 0, 0), white=(90, 160, 250)))
        photo = photo.resize((280, 280), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (700, 560), photo.getpixel((0, 0)))
        canvas.paste(photo, (60 + row % 300, 200))
        path = tmp_path / f"photo{row}.jpg"
        canvas.save(path, quality=85)
        paths.append(path)
        expected.append(str(index.ids[row]))
    result = run("query", *paths, "--index-dir", conv_denoising_index_dir, "--json", "-k", "10")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record, item_id in zip(records, expected, strict=True):
        assert item_id in [r["id"] for r in record["results"]]
    assert sum(r["results"][0]["id"] == i for r, i in zip(records, expected, strict=True)) >= 2
