"""Embeddings as data: export, embed (in this process), build-index --from-embeddings (sharded),
and what every command does with such an index. The Ray runs are in test_distributed.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex, parquet
from simsearch.cli import app
from simsearch.data import load_split
from tests.fakedata import save_onnx_index

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result: Any) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output


def same_answers(a: SearchIndex, b: SearchIndex, queries: np.ndarray, k: int = 10) -> None:
    """Identical ids and similarities for every query."""
    ids_a, sims_a = a.search_arrays(queries, k)
    ids_b, sims_b = b.search_arrays(queries, k)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(sims_a, sims_b)


@pytest.fixture(scope="module")
def onnx_index(tmp_path_factory: pytest.TempPathFactory, fake_data_dir: Path) -> Path:
    """An index with an ONNX encoder over the 400 fake train items."""
    train = load_split("train", fake_data_dir)
    return save_onnx_index(tmp_path_factory.mktemp("onnx") / "index", train.images, train.labels)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, fake_data_dir: Path) -> Path:
    """A folder catalog: 60 PNG files in two class folders, and one file that is no image."""
    folder = tmp_path_factory.mktemp("photos")
    images = load_split("test", fake_data_dir).images
    for i in range(60):
        sub = folder / ("bags" if i % 2 else "shoes")
        sub.mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(sub / f"item{i:03d}.png")
    (folder / "shoes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


# ---------------------------------------------------------------------- export


def test_export_round_trips_into_a_fresh_index(tmp_path: Path, pca_index_dir: Path) -> None:
    out = tmp_path / "items.parquet"
    result = cli("export", "--out", out, "--index-dir", pca_index_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}: 400 items, 16-d vectors\n"

    import pyarrow.parquet as pq

    file = pq.read_table(out)
    assert file.column_names == ["id", "label", "label_name", "source", "vector"]
    meta = json.loads(file.schema.metadata[b"simsearch"])
    original = SearchIndex.load(pca_index_dir)
    assert meta["encoder_sha256"] == original.manifest["files"]["encoder.npz"]["sha256"]
    assert (meta["dim"], meta["count"], meta["model"]["model"]) == (16, 400, "pca")
    assert meta["label_names"] == original.label_names
    assert file.column("label_name")[7].as_py() == original.label_name_of(7)

    # Into a fresh index: the encoder comes from --model-from, checked against the file.
    fresh = tmp_path / "fresh"
    built = cli("build-index", "--from-embeddings", out, "--model-from", pca_index_dir,
                "--index-dir", fresh, "-q")  # fmt: skip
    assert built.exit_code == 0, built.output
    copy = SearchIndex.load(fresh)
    np.testing.assert_array_equal(copy.ids, original.ids)
    np.testing.assert_array_equal(copy.vectors, original.vectors)
    same_answers(original, copy, original.vectors)
    same_answers(original, copy, original.embed_pixels(np.asarray(original.images[:50])))
    item = tmp_path / "item.png"
    Image.fromarray(np.asarray(original.images[5])).save(item)
    a = cli("query", item, "--json", "--index-dir", pca_index_dir)
    b = cli("query", item, "--json", "--index-dir", fresh)
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout

    # Without --images the fresh index has no item images, and says so in one line.
    assert not copy.has_item_images
    one_line_error(cli("export-item", copy.ids[0], tmp_path / "x.png", "--index-dir", fresh))
    assert not (tmp_path / "x.png").exists()
    with_images = tmp_path / "with-images.parquet"
    exported = cli("export", "--out", with_images, "--images", "--index-dir", pca_index_dir)
    assert exported.exit_code == 0
    again = tmp_path / "again"
    cli("build-index", "--from-embeddings", with_images, "--model-from", pca_index_dir,
        "--index-dir", again, "-q")  # fmt: skip
    np.testing.assert_array_equal(SearchIndex.load(again).images, original.images)


def test_an_export_from_another_model_is_refused(
    tmp_path: Path, pca_index_dir: Path, onnx_index: Path
) -> None:
    out = tmp_path / "items.parquet"
    assert cli("export", "--out", out, "--index-dir", pca_index_dir).exit_code == 0
    target = tmp_path / "new"
    # No model given, another model, a file that is not Parquet, one with the wrong columns.
    one_line_error(cli("build-index", "--from-embeddings", out, "--index-dir", target))
    wrong = cli("build-index", "--from-embeddings", out, "--model-from", onnx_index,
                "--index-dir", target)  # fmt: skip
    one_line_error(wrong)
    assert "another model" in wrong.stderr
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not parquet")
    one_line_error(cli("build-index", "--from-embeddings", tmp_path / "junk.parquet",
                       "--model-from", pca_index_dir, "--index-dir", target))  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "other.parquet")
    one_line_error(cli("build-index", "--from-embeddings", tmp_path / "other.parquet",
                       "--model-from", pca_index_dir, "--index-dir", target))  # fmt: skip
    # The right model's sha256 on vectors of another dimension.
    meta = parquet.index_metadata(SearchIndex.load(pca_index_dir))
    rows = parquet.table(["a", "b"], [0, 1], [], ["", ""], np.eye(2, 8, dtype=np.float32), meta)
    parquet.write(tmp_path / "8d.parquet", rows)
    dims = cli("build-index", "--from-embeddings", tmp_path / "8d.parquet", "--model-from",
               pca_index_dir, "--index-dir", target)  # fmt: skip
    one_line_error(dims)
    assert "8-d" in dims.stderr and "16-d" in dims.stderr
    # Rows an index cannot hold: a vector of another length than 1 (it would outrank identical
    # items), a zero vector, an item without an id, a label without a name.
    unit = np.eye(3, 16, dtype=np.float32)
    names = meta["label_names"]
    for ids, labels, vectors, said in (
        (["a", "b", "c"], [0, 1, 2], unit * [[1.0], [10.0], [1.0]], "length 10"),
        (["a", "b", "c"], [0, 1, 2], unit * [[1.0], [1.0], [0.0]], "length 0"),
        (["a", None, "c"], [0, 1, 2], unit, "without an id"),
        (["a", "", "c"], [0, 1, 2], unit, "without an id"),
        (["a", "b", "c"], [0, len(names), 2], unit, f"label {len(names)}"),
        (["a", "b", "c"], [0, -7, 2], unit, "label -7"),
    ):
        flat = pa.array(np.asarray(vectors, np.float32).reshape(-1))
        rows = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "label": pa.array(labels, pa.int16()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, 16),
            }
        ).replace_schema_metadata({b"simsearch": json.dumps(meta)})
        pq.write_table(rows, tmp_path / "bad.parquet")
        bad = cli("build-index", "--from-embeddings", tmp_path / "bad.parquet", "--model-from",
                  pca_index_dir, "--index-dir", target)  # fmt: skip
        one_line_error(bad)
        assert said in bad.stderr, bad.stderr
    assert not target.exists()  # nothing written by any of them


def test_export_cannot_write(tmp_path: Path, pca_index_dir: Path) -> None:
    out = tmp_path / "missing" / "x.parquet"
    result = cli("export", "--out", out, "--index-dir", pca_index_dir)
    one_line_error(result)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- sharded IVF


@pytest.mark.parametrize("pq_m", [0, 4])
def test_ivf_shards_search_their_shared_quantizer_once(pq_m: int) -> None:
    """Shards filled from one trained IVF (flat or PQ codes) answer exactly what the unsharded
    index answers, with or without a filter; the lists to visit are found once for all."""
    from simsearch import vector_index as vi

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((4000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(4000, 30)] + 0.1 * rng.standard_normal((30, 16)).astype("f4")
    params = {"nlist": 32, "nprobe": 4, "pq_m": pq_m}
    empty = vi.trained_empty(vectors, "ivf", params)
    one = vi.VectorIndex(vi.filled(empty, vectors), "ivf", params)
    sharded = vi.ShardedIndex(
        [vi.VectorIndex(vi.filled(empty, part), "ivf", params) for part in np.split(vectors, 5)]
    )
    assert sharded.quantizer is not None
    allowed = rng.random(4000) < 0.3
    for mask in (None, allowed):
        for batch in (queries[:3], queries):  # one thread, and the batch path
            a_scores, a_rows = one.search(batch, 10, mask)
            b_scores, b_rows = sharded.search(batch, 10, mask)
            np.testing.assert_array_equal(b_rows, a_rows)
            np.testing.assert_allclose(b_scores, a_scores, atol=1e-6)
    # Shards of separately trained quantizers are searched each with its own.
    other = vi.trained_empty(vectors[::-1].copy(), "ivf", params)
    mixed = vi.ShardedIndex(
        [sharded.shards[0], vi.VectorIndex(vi.filled(other, vectors), "ivf", params)]
    )
    assert mixed.quantizer is None
    assert mixed.search(queries, 10)[1].shape == (30, 10)


# ---------------------------------------------------------------------- embed, in this process


def embed(*args: Any) -> Any:
    return cli("embed", "-q", *args)


def test_embed_fashion_mnist_then_a_sharded_index(
    tmp_path: Path, onnx_index: Path, fake_data_dir: Path
) -> None:
    out = tmp_path / "emb"
    result = embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir,
                   "--batch-size", 150)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"embedded 400 items into {out} (3 part(s), ")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["encoder.onnx", "manifest.json", *(f"part-{i:05d}.parquet" for i in range(3))]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["count"], manifest["embedding_dim"], manifest["skipped"]) == (400, 32, [])
    assert [p["rows"] for p in manifest["parts"].values()] == [150, 150, 100]
    source = SearchIndex.load(onnx_index)
    assert manifest["encoder"]["sha256"] == source.manifest["files"]["encoder.onnx"]["sha256"]
    items = parquet.read(sorted(out.glob("part-*.parquet")), 32)
    np.testing.assert_array_equal(items.ids, source.ids)
    np.testing.assert_array_equal(items.labels, source.labels)
    np.testing.assert_allclose(items.vectors, source.vectors, atol=1e-6)
    np.testing.assert_array_equal(items.images, source.images)

    # Sharded (flat): exactly the answers of the one flat index over the same vectors.
    one, four = tmp_path / "one", tmp_path / "four"
    assert cli("build-index", "--from-embeddings", out, "--index-dir", one, "-q").exit_code == 0
    built = cli("build-index", "--from-embeddings", out, "--shards", 4, "--index-dir", four)
    assert built.exit_code == 0, built.output
    assert "flat index in 4 shard(s)" in built.stdout
    sharded = SearchIndex.load(four)
    assert sharded.manifest["index"]["shards"] == [100, 100, 100, 100]
    assert {f"index-{i:03d}.faiss" for i in range(4)} <= set(sharded.manifest["files"])
    same_answers(SearchIndex.load(one), sharded, items.vectors, k=25)
    assert cli("verify", "--index-dir", four).exit_code == 0

    # IVF: shards share the quantizer, so 4 shards answer what 1 does.
    ivf1, ivf4 = tmp_path / "ivf1", tmp_path / "ivf4"
    for target, shards in ((ivf1, 1), (ivf4, 4)):
        done = cli("build-index", "--from-embeddings", out, "--index-type", "ivf", "--nlist", 8,
                   "--nprobe", 2, "--shards", shards, "--index-dir", target, "-q")  # fmt: skip
        assert done.exit_code == 0, done.output
    same_answers(SearchIndex.load(ivf1), SearchIndex.load(ivf4), items.vectors, k=25)


def test_a_sharded_index_takes_every_command(
    tmp_path: Path, onnx_index: Path, fake_data_dir: Path, photos: Path
) -> None:
    out, index_dir = tmp_path / "emb", tmp_path / "index"
    embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir)
    cli("build-index", "--from-embeddings", out, "--shards", 3, "--index-dir", index_dir, "-q")

    info = cli("info", "--index-dir", index_dir)
    assert "shards       3 (134, 133, 133 items)" in info.stdout
    evaluation = cli("evaluate", "--json", "--data-dir", fake_data_dir, "--index-dir", index_dir,
                     "-q")  # fmt: skip
    assert evaluation.exit_code == 0, evaluation.output
    direct = cli("evaluate", "--json", "--data-dir", fake_data_dir, "--index-dir", onnx_index, "-q")
    assert json.loads(evaluation.stdout)["model"] == json.loads(direct.stdout)["model"]

    added = cli("add", photos / "shoes" / "item000.png", "--index-dir", index_dir, "-q")
    assert added.exit_code == 0, added.output
    index = SearchIndex.load(index_dir)
    assert index.manifest["index"]["shards"] == [134, 133, 134]  # into the last shard
    hits = index.query(photos / "shoes" / "item000.png", k=1)
    assert hits[0].id.endswith("item000.png") and hits[0].similarity == 1.0
    removed = cli("remove", "fashion-mnist/train/00000", "fashion-mnist/train/00399",
                  "--index-dir", index_dir)  # fmt: skip
    assert removed.exit_code == 0, removed.output
    assert SearchIndex.load(index_dir).manifest["index"]["shards"] == [133, 133, 133]

    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    with TestClient(create_app(index_dir), base_url="http://localhost") as client:
        health = client.get("/api/health").json()
        assert (health["count"], health["item_images"]) == (399, True)
        with open(photos / "shoes" / "item000.png", "rb") as f:
            found = client.post("/api/search?k=3", files={"image": ("q.png", f, "image/png")})
        assert found.status_code == 200 and found.json()["results"][0]["similarity"] == 1.0
        first = found.json()["results"][0]["id"]
        assert client.get(f"/api/items/{first}/image").status_code == 200


def test_an_index_without_item_images_says_so(
    tmp_path: Path, onnx_index: Path, fake_data_dir: Path, photos: Path
) -> None:
    out, index_dir = tmp_path / "emb", tmp_path / "index"
    embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir, "--no-images")
    assert parquet.read(sorted(out.glob("part-*.parquet"))).images is None
    built = cli("build-index", "--from-embeddings", out, "--shards", 2, "--index-dir", index_dir)
    assert built.stdout.rstrip().endswith("(no item images)")
    index = SearchIndex.load(index_dir)
    assert not index.has_item_images and index.manifest["catalog"]["item_images"] is False
    assert index.query(photos / "shoes" / "item000.png", k=3)  # searches as usual
    one_line_error(cli("export-item", index.ids[0], tmp_path / "x.png", "--index-dir", index_dir))
    evaluation = cli("evaluate", "--data-dir", fake_data_dir, "--index-dir", index_dir, "-q")
    one_line_error(evaluation)
    assert "no item images" in evaluation.stderr

    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    with TestClient(create_app(index_dir), base_url="http://localhost") as client:
        assert client.get("/api/health").json()["item_images"] is False
        missing = client.get(f"/api/items/{index.ids[0]}/image")
        assert missing.status_code == 404
        assert missing.json() == {"error": "this index has no item images (it was built from "
                                           "embeddings without them)"}  # fmt: skip


@pytest.mark.slow
def test_the_page_shows_no_thumbnails_for_an_index_without_item_images(
    tmp_path: Path, onnx_index: Path, fake_data_dir: Path, photos: Path
) -> None:
    from tests.test_server import serve_process
    from tests.test_web_page import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    out, index_dir = tmp_path / "emb", tmp_path / "index"
    embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir, "--no-images")
    cli("build-index", "--from-embeddings", out, "--index-dir", index_dir, "-q")
    with serve_process(index_dir) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(url + "/")
            status = "document.querySelector('#status').textContent"
            page.wait_for_function(f"{status}.includes('no item images')")
            assert page.locator("#random").is_disabled()
            page.set_input_files("#file", str(photos / "shoes" / "item000.png"))
            page.wait_for_function("document.querySelectorAll('#results .hit').length === 10")
            assert page.locator("#results .hit img").count() == 0  # no request for an image
            assert page.locator("#results .hit .none").first.inner_text() == "no image"
            assert page.locator("#error").is_hidden()
        finally:
            browser.close()


def test_embed_a_folder_lists_unreadable_files_like_build_index(
    tmp_path: Path, pca_index_dir: Path, photos: Path
) -> None:
    out = tmp_path / "emb"
    result = embed("--catalog", photos, "--labels-from-folders", "--model-from", pca_index_dir,
                   "--out", out, "--batch-size", 16)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("1 unreadable file(s) skipped")
    manifest = json.loads((out / "manifest.json").read_text())
    built = cli("build-index", "--catalog", photos, "--labels-from-folders", "--model-from",
                pca_index_dir, "--index-dir", tmp_path / "direct", "-q")  # fmt: skip
    assert built.exit_code == 0, built.output
    direct = SearchIndex.load(tmp_path / "direct")
    assert manifest["skipped"] == direct.manifest["catalog"]["skipped"]
    assert manifest["skipped"][0]["path"] == str(photos / "shoes" / "broken.png")
    assert manifest["label_names"] == direct.label_names == ["bags", "shoes"]

    index_dir = tmp_path / "index"
    cli("build-index", "--from-embeddings", out, "--index-dir", index_dir, "-q")
    index = SearchIndex.load(index_dir)
    np.testing.assert_array_equal(index.ids, direct.ids)
    np.testing.assert_array_equal(index.labels, direct.labels)
    np.testing.assert_array_equal(index.sources, direct.sources)
    np.testing.assert_allclose(index.vectors, direct.vectors, atol=1e-6)
    assert index.manifest["catalog"]["skipped"] == manifest["skipped"]
    # `add` gives a catalog file the id embed gave it (relative to the catalog folder).
    again = cli("add", photos / "bags" / "item001.png", "--index-dir", index_dir, "-q")
    one_line_error(again)
    assert "'bags/item001.png' is already in the index" in again.stderr


def test_embed_lists_of_paths(tmp_path: Path, pca_index_dir: Path, photos: Path) -> None:
    files = [str(p) for p in sorted(photos.rglob("item*.png"), key=lambda p: p.name)[:10]]
    text = tmp_path / "list.txt"
    text.write_text("# a catalog\n" + "\n".join(files) + "\n\n")
    done = embed("--catalog", text, "--model-from", pca_index_dir, "--out", tmp_path / "a")
    assert done.exit_code == 0, done.output
    import pyarrow as pa
    import pyarrow.parquet as pq

    listing = tmp_path / "list.parquet"
    names = ["bags" if "bags" in f else "shoes" for f in files]
    ids = [f"x/{i}" for i in range(10)]
    pq.write_table(pa.table({"path": files, "id": ids, "label_name": names}), listing)
    result = embed("--catalog", listing, "--limit", 6, "--model-from", pca_index_dir,
                   "--out", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 0, result.output
    a = parquet.read(sorted((tmp_path / "a").glob("part-*.parquet")))
    b = parquet.read(sorted((tmp_path / "b").glob("part-*.parquet")))
    assert a.ids.tolist() == [str(Path(f)) for f in files]
    assert b.ids.tolist() == ids[:6] and b.label_names == ["bags", "shoes"]
    assert [b.label_names[i] for i in b.labels] == names[:6]
    np.testing.assert_array_equal(a.vectors[:6], b.vectors)


def test_embed_cli_defaults_are_the_library_defaults() -> None:
    import inspect

    from simsearch.cli import embed as embed_command
    from simsearch.embeddings import EmbedConfig

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(embed_command).parameters.items()
    }
    library = EmbedConfig()
    for name in ("catalog", "split", "limit", "batch_size", "images", "labels_from_folders"):
        assert defaults[name] == getattr(library, name), name


def test_embed_refuses_and_writes_nothing(
    tmp_path: Path, pca_index_dir: Path, fake_data_dir: Path
) -> None:
    out = tmp_path / "emb"
    args = ["--model-from", pca_index_dir, "--data-dir", fake_data_dir]
    assert embed(*args, "--out", out, "--limit", 10).exit_code == 0
    first = (out / "manifest.json").read_bytes()
    one_line_error(embed(*args, "--out", out, "--limit", 20))  # exists
    assert (out / "manifest.json").read_bytes() == first
    assert embed(*args, "--out", out, "--limit", 20, "--force").exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["count"] == 20
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    one_line_error(embed(*args, "--out", other, "--force"))  # not an embeddings folder
    assert (other / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"no image")
    target = tmp_path / "deep" / "er" / "emb"
    for bad in (
        ["--catalog", tmp_path / "nothing-here"],  # no such catalog
        ["--catalog", empty],  # only an unreadable file
        ["--model-from", tmp_path / "no-index"],
        ["--split", "validation"],
    ):
        one_line_error(embed(*args, "--out", target, *bad))
    (empty / "broken.png").unlink()
    one_line_error(embed(*args, "--out", target, "--catalog", empty))  # no image files
    assert not (tmp_path / "deep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "empty", "mine"]


def test_broken_embeddings_are_refused(
    tmp_path: Path, pca_index_dir: Path, onnx_index: Path, fake_data_dir: Path
) -> None:
    out = tmp_path / "emb"
    embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir,
          "--batch-size", 200)  # fmt: skip
    target = tmp_path / "index"

    def refused(*extra: Any) -> str:
        result = cli("build-index", "--from-embeddings", out, "--index-dir", target, *extra)
        one_line_error(result)
        assert not target.exists()
        return str(result.stderr)

    assert "another model" in refused("--model-from", pca_index_dir)
    assert "--catalog" in refused("--catalog", fake_data_dir)
    part = out / "part-00001.parquet"
    data = part.read_bytes()
    part.write_bytes(data[:-10] + bytes(10))  # corrupt
    assert "part-00001.parquet" in refused() and "sha256" in refused()
    part.unlink()  # missing
    assert "part-00001.parquet: listed in manifest.json but missing" in refused()
    part.write_bytes(data)
    (out / "encoder.onnx").write_bytes(b"x")
    assert "encoder.onnx" in refused()
    nowhere = tmp_path / "none"
    one_line_error(cli("build-index", "--from-embeddings", nowhere, "--index-dir", target))
    one_line_error(cli("build-index", "--shards", 2, "--index-dir", target))  # needs embeddings


def test_embed_on_an_unreachable_cluster_fails_at_once(
    tmp_path: Path, pca_index_dir: Path, fake_data_dir: Path
) -> None:
    pytest.importorskip("ray")
    for address in ("127.0.0.1:1", "no-such-host.invalid:6379", "not an address"):
        result = embed("--model-from", pca_index_dir, "--data-dir", fake_data_dir,
                       "--out", tmp_path / "emb", "--ray", address)  # fmt: skip
        one_line_error(result)
        assert "Ray cluster" in result.stderr or "--ray" in result.stderr
    built = cli("build-index", "--from-embeddings", tmp_path, "--ray", "127.0.0.1:1",
                "--index-dir", tmp_path / "index")  # fmt: skip
    one_line_error(built)
    assert list(tmp_path.iterdir()) == []


def test_query_path_and_help_import_neither_ray_nor_tensorflow(
    tmp_path: Path, onnx_index: Path, fake_data_dir: Path, photos: Path
) -> None:
    out, index_dir = tmp_path / "emb", tmp_path / "index"
    embed("--model-from", onnx_index, "--out", out, "--data-dir", fake_data_dir)
    cli("build-index", "--from-embeddings", out, "--shards", 2, "--index-dir", index_dir, "-q")
    code = (
        "import json, sys\n"
        "from simsearch import SearchIndex\n"
        "from simsearch.cli import app\n"
        f"index = SearchIndex.load({str(index_dir)!r})\n"
        f"hits = index.query({str(photos / 'bags' / 'item001.png')!r})\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'ray', 'tensorflow', 'keras', 'pyarrow'})\n"
        "print(json.dumps({'heavy': heavy, 'hits': len(hits)}))\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"heavy": [], "hits": 10}
