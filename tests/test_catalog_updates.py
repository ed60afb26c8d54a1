"""Folder catalogs, add/remove without a rebuild, index types, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex
from simsearch.cli import app
from simsearch.errors import DuplicateIdError, ItemNotFoundError
from tests.fakedata import make_images

runner = CliRunner()


def run(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """boxes/ and rings/ (nested), 30 PNG/JPEG images each, plus corrupt and non-image files."""
    root = tmp_path / "shop"
    images, labels = make_images(60, seed=5)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / ("boxes" if label % 2 == 0 else "rings") / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if i % 4 else ".jpg"
        image = Image.fromarray(pixels)
        image.save(folder / f"item{i:03d}{suffix}", quality=95)
    (root / "boxes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "rings" / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image, ignored")
    (root / ".hidden").mkdir()
    Image.fromarray(images[0]).save(root / ".hidden" / "skip.png")
    return root


def test_folder_catalog_build(photo_folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "idx"
    result = run(
        "build-index",
        "--catalog",
        photo_folder,
        "--model",
        "pca",
        "--code-size",
        "8",
        "--labels-from-folders",
        "--index-dir",
        target,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "60 items" in result.stdout and "2 unreadable file(s) skipped" in result.stdout
    index = SearchIndex.load(target)
    assert len(index) == 60
    manifest = index.manifest
    assert manifest["catalog"]["source"] == "folder"
    assert sorted(Path(s["path"]).name for s in manifest["catalog"]["skipped"]) == [
        "broken.png",
        "empty.jpg",
    ]
    assert index.label_names == ["boxes", "rings"]
    ids = index.ids.tolist()
    assert "boxes/deep/item000.jpg" in ids or "rings/deep/item000.jpg" in ids
    assert not any(i.startswith(".hidden") for i in ids)
    # A folder item finds itself, with its source path and folder label.
    query = photo_folder / ids[5]
    hit = index.query(query, k=1)[0]
    assert hit.id == ids[5] and hit.distance < 1e-4
    assert hit.source == str(query) and hit.label_name == ids[5].split("/")[0]


def test_folder_catalog_with_model_from(
    photo_folder: Path, pca_index_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "reuse"
    result = run(
        "build-index",
        "--catalog",
        photo_folder,
        "--model-from",
        pca_index_dir,
        "--index-dir",
        target,
        "-q",
    )
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(target)
    source = SearchIndex.load(pca_index_dir)
    assert index.dim == source.dim
    assert index.manifest["model"]["encoder_sha256"] == source.manifest["model"]["encoder_sha256"]
    assert index.label_names == []  # no --labels-from-folders: no labels
    assert index.query(photo_folder / str(index.ids[0]), k=1)[0].label is None


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = run("build-index", "--catalog", tmp_path / "nope", "--index-dir", tmp_path / "x")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: --catalog must be")


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_add_remove_round_trip(index_type: str, fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / index_type
    result = run(
        "build-index",
        "--model",
        "pca",
        "--code-size",
        "8",
        "--data-dir",
        fake_data_dir,
        "--index-type",
        index_type,
        "--index-dir",
        target,
        "-q",
    )
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(target)
    assert index.manifest["index"]["type"] == index_type
    extra, _ = make_images(5, seed=99)
    index.add(extra, [f"new/{i}" for i in range(5)], labels=[1, 2, None, 3, 4])
    index.save(target)

    loaded = SearchIndex.load(target)
    assert len(loaded) == 405
    hit = loaded.query(extra[2], k=1)[0]
    assert hit.id == "new/2" and hit.label is None and hit.distance < 1e-4
    assert loaded.query(extra[3], k=1)[0].label == 3

    with pytest.raises(DuplicateIdError):
        loaded.add(extra[:1], ["new/0"])
    with pytest.raises(DuplicateIdError):
        loaded.add(extra[:2], ["twice", "twice"])
    with pytest.raises(ItemNotFoundError):
        loaded.remove(["new/0", "no-such-id"])
    assert len(loaded) == 405  # nothing changed by the refused calls

    loaded.remove(["new/2", "fashion-mnist/train/00000"])
    loaded.save(target)
    final = SearchIndex.load(target)
    assert len(final) == 403
    assert "new/2" not in final.ids.tolist()
    assert final.query(extra[2], k=1)[0].id != "new/2"
    assert final.query(extra[4], k=1)[0].id == "new/4"


def test_hnsw_removal_keeps_tombstones_until_a_rebuild(fake_data_dir: Path, tmp_path: Path) -> None:
    """HNSW removals cost no rebuild: FAISS keeps the nodes, searches skip them, saves keep that."""
    target = tmp_path / "hnsw"
    args = ["build-index", "--model", "pca", "--code-size", "8", "--index-type", "hnsw"]
    assert run(*args, "--data-dir", fake_data_dir, "--index-dir", target, "-q").exit_code == 0
    index = SearchIndex.load(target)
    graph = index.faiss_index
    gone = [str(i) for i in index.ids[:20]]  # 5% of 400
    pixels = np.asarray(index.images[:20])
    index.remove(gone)
    assert index.faiss_index is graph and graph.ntotal == 400  # no rebuild
    index.save(target)

    loaded = SearchIndex.load(target)
    assert len(loaded) == 380 and loaded.faiss_index.ntotal == 400
    assert loaded.manifest["index"]["tombstones"] == 20
    assert "20 removed items skipped" in run("info", "--index-dir", target).output
    for batch in (loaded.query_pixels(pixels, k=380), loaded.query_batch(pixels[:3], k=5)):
        for hits in batch:
            found = [hit.id for hit in hits]
            assert not set(found) & set(gone)
            assert len(found) == len(set(found)) == len(hits)
    self_hit = loaded.query_pixels(np.asarray(loaded.images[:1]), k=1)[0][0]
    assert self_hit.id == str(loaded.ids[0]) and self_hit.distance < 1e-4
    # A later add appends after the tombstones and is found.
    extra, _ = make_images(2, seed=7)
    loaded.add(extra, ["new/a", "new/b"])
    assert loaded.query(extra[1], k=1)[0].id == "new/b"
    loaded.save(target)
    reloaded = SearchIndex.load(target)
    assert reloaded.query(extra[0], k=1)[0].id == "new/a"
    assert reloaded.row_of("new/a") == 380

    # Past 10% tombstones the graph is rebuilt without them.
    reloaded.remove([str(i) for i in reloaded.ids[:30]])
    assert reloaded.faiss_rows is None and reloaded.faiss_index.ntotal == len(reloaded) == 352
    reloaded.save(target)
    final = SearchIndex.load(target)
    assert "faiss_rows.npy" not in final.manifest["files"] and len(final) == 352


def test_add_and_remove_cli(pca_index_dir: Path, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "idx"
    shutil.copytree(pca_index_dir, target)
    new = tmp_path / "new"
    new.mkdir()
    images, _ = make_images(3, seed=42)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(new / f"n{i}.png")
    (new / "bad.png").write_bytes(b"nope")
    result = run("add", new, "--index-dir", target, "-q")
    assert result.exit_code == 1  # one unreadable file: reported, the others added
    assert "added 3 item(s); the index holds 403" in result.stdout
    assert result.stderr.count("error:") == 1 and "bad.png" in result.stderr
    out = run("query", new / "n1.png", "--index-dir", target, "--json", "-k", "1")
    record = json.loads(out.stdout)["results"][0]
    assert record["id"].endswith("new/n1.png") and record["source"] == str(
        (new / "n1.png").resolve()
    )

    again = run("add", new / "n1.png", "--index-dir", target)
    assert again.exit_code == 1 and "already in the index" in again.stderr
    assert len(SearchIndex.load(target)) == 403

    removed = run("remove", record["id"], "--index-dir", target)
    assert removed.exit_code == 0, removed.output
    assert "the index holds 402" in removed.stdout
    unknown = run("remove", "nope", "--index-dir", target)
    assert unknown.exit_code == 1 and unknown.stderr.strip() == "error: no item 'nope' in the index"
    missing = run("add", new, "--index-dir", tmp_path / "missing")
    assert missing.exit_code == 1 and not (tmp_path / "missing").exists()


WRITER = """
import sys, numpy as np
from simsearch import SearchIndex
from tests.fakedata import make_images
directory = sys.argv[1]
extra, _ = make_images(1, seed=7)
i = 0
while True:
    index = SearchIndex.load(directory)
    index.add(extra, [f"w{i}"])
    index.save(directory)
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow  # kills a writer process many times: ~5 s
def test_kill_during_saves_leaves_a_loadable_index(pca_index_dir: Path, tmp_path: Path) -> None:
    """kill -9 a process that keeps adding and saving; every survivor state loads."""
    import shutil

    target = tmp_path / "idx"
    shutil.copytree(pca_index_dir, target)
    rng = np.random.default_rng(0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0 + float(rng.uniform(0, 1.5)))  # import time, then mid-way through saves
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        index = SearchIndex.load(target)  # verifies every checksum
        assert len(index) >= 400
        assert len(index.vectors) == index.faiss_index.ntotal == len(index)
    assert len(SearchIndex.load(target)) > 400  # the writer did get saves through between kills
