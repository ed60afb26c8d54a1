from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simsearch import Hit, SearchIndex, storage
from simsearch.build import BuildConfig, build_index
from simsearch.errors import (
    ConfigError,
    IncompatibleIndexError,
    IndexCorruptError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidImageError,
)
from simsearch.training import TrainConfig


@pytest.fixture
def index_copy(tmp_path: Path, pca_index_dir: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(pca_index_dir, target)
    return target


def test_manifest_describes_the_index(pca_index_dir: Path) -> None:
    manifest = json.loads((pca_index_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["manifest_sha256"] == storage.manifest_digest(manifest)
    assert manifest["metric"] == "cosine"
    assert manifest["embedding_dim"] == 16
    assert manifest["count"] == 400
    assert manifest["index"]["type"] == "flat"
    assert manifest["model"]["model"] == "pca" and manifest["model"]["code_size"] == 16
    assert {"simsearch", "tensorflow", "keras", "faiss"} <= set(manifest["versions"])
    assert manifest["versions"]["faiss"]
    assert manifest["created_at"].endswith("+00:00")
    for name in ("encoder.npz", "vectors.npy", "items.npz", "images.npy", "index.faiss"):
        entry = manifest["files"][name]
        path = pca_index_dir / entry["path"]
        import hashlib

        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]


def test_load_round_trip(pca_index_dir: Path, tmp_path: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    assert len(index) == 400
    index.save(tmp_path / "again")
    again = SearchIndex.load(tmp_path / "again")
    assert len(again) == 400
    np.testing.assert_array_equal(again.vectors, index.vectors)
    assert again.ids.tolist() == index.ids.tolist()
    assert again.query(index.item_pixels("fashion-mnist/train/00003"), k=1)[0].id == (
        "fashion-mnist/train/00003"
    )


def test_every_catalog_item_finds_itself(pca_index_dir: Path, tmp_path: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    # Through PNG files, as a user would export them; all 400 items.
    pngs = []
    for row in range(len(index)):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(index.images[row])).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    results = index.query_batch(pngs, k=3)
    for row, hits in enumerate(results):
        assert hits[0].id == index.ids[row]
        assert hits[0].distance < 1e-4
        assert hits[0].rank == 1 and [h.rank for h in hits] == [1, 2, 3]


def test_query_accepts_path_bytes_pil_and_array(pca_index_dir: Path, item_png: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    expected = "fashion-mnist/train/00007"
    inputs = [
        item_png,
        str(item_png),
        item_png.read_bytes(),
        Image.open(item_png),
        np.asarray(Image.open(item_png)),
    ]
    for image in inputs:
        hits = index.query(image, k=5)
        assert isinstance(hits[0], Hit)
        assert hits[0].id == expected and hits[0].distance < 1e-4
        assert hits[0].label == int(index.labels[7])
        assert hits[0].label_name is not None and hits[0].source is None
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        assert all(abs(h.distance - (1 - h.similarity)) < 1e-9 for h in hits)


def test_hit_is_frozen(pca_index_dir: Path, item_png: Path) -> None:
    hit = SearchIndex.load(pca_index_dir).query(item_png, k=1)[0]
    with pytest.raises(AttributeError):
        hit.rank = 2  # type: ignore[misc]
    fields = hit.to_dict()
    assert (
        hit == Hit(**fields) and hash(hit) == hash(Hit(**fields)) and repr(hit).startswith("Hit(")
    )


def test_query_batch_keeps_order_and_embed_is_normalised(pca_index_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    rows = [5, 1, 300, 42]
    images = [np.asarray(index.images[r]) for r in rows]
    batches = index.query_batch(images, k=2)
    assert [hits[0].id for hits in batches] == [str(index.ids[r]) for r in rows]
    vectors = index.embed(images)
    assert vectors.shape == (4, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert index.embed(np.stack(images)).shape == (4, 16)


def test_k_larger_than_catalog_and_invalid_k(pca_index_dir: Path, item_png: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    assert len(index.query(item_png, k=1000)) == 400
    for bad in (0, -1, 10**9):
        with pytest.raises(ConfigError):
            index.query(item_png, k=bad)


def test_bad_image_raises_typed_error(pca_index_dir: Path, tmp_path: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    (tmp_path / "text.png").write_text("not an image")
    for bad in (tmp_path / "missing.png", tmp_path / "text.png", tmp_path, b""):
        with pytest.raises(InvalidImageError):
            index.query(bad)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        SearchIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match=r"manifest\.json"):
        SearchIndex.load(tmp_path / "empty")


def test_incompatible_format_version(index_copy: Path) -> None:
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleIndexError, match="format_version 99"):
        SearchIndex.load(index_copy)


def test_manifest_not_json(index_copy: Path) -> None:
    (index_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        SearchIndex.load(index_copy)


@pytest.mark.parametrize(
    "name", ["index.faiss", "vectors.npy", "items.npz", "encoder.npz", "images.npy"]
)
def test_tampered_file_is_detected_by_name(index_copy: Path, name: str) -> None:
    manifest = json.loads((index_copy / "manifest.json").read_text())
    path = index_copy / manifest["files"][name]["path"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(blob))
    if name == "images.npy":  # not needed to search: checked on first use, before any copy
        index = SearchIndex.load(index_copy)
        bar = np.zeros((1, 28, 28), np.uint8)
        bar[0, 4:24, 10:18] = 255
        assert index.query_pixels(np.zeros((1, 28, 28), np.uint8) + 9, k=1)  # search works
        for use in (
            lambda: index.images,
            lambda: index.item_png("fashion-mnist/train/00007"),
            lambda: index.save(index_copy),
            lambda: index.add(bar, ["new"]),
            lambda: index.remove(["fashion-mnist/train/00007"]),
        ):
            with pytest.raises(IndexCorruptError, match=name):
                use()
        assert len(index) == index.faiss_index.ntotal == 400  # the refused changes changed nothing
        return
    with pytest.raises(IndexCorruptError, match=name):
        SearchIndex.load(index_copy)


@pytest.mark.parametrize("name", ["index.faiss", "vectors.npy", "items.npz"])
def test_truncated_file_fails_cleanly_even_unverified(index_copy: Path, name: str) -> None:
    manifest = json.loads((index_copy / "manifest.json").read_text())
    path = index_copy / manifest["files"][name]["path"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(IndexCorruptError):
        SearchIndex.load(index_copy)
    with pytest.raises(IndexCorruptError):
        SearchIndex.load(index_copy, verify=False)


def test_missing_data_file(index_copy: Path) -> None:
    manifest = json.loads((index_copy / "manifest.json").read_text())
    (index_copy / manifest["files"]["index.faiss"]["path"]).unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        SearchIndex.load(index_copy)


def test_build_refuses_to_replace_without_force(fake_data_dir: Path, index_copy: Path) -> None:
    before = (index_copy / "manifest.json").read_text()
    config = BuildConfig(
        data_dir=str(fake_data_dir), limit=50, train=TrainConfig(model="pca", code_size=8)
    )
    with pytest.raises(IndexExistsError, match="--force"):
        build_index(config, index_copy)
    assert (index_copy / "manifest.json").read_text() == before
    build_index(config, index_copy, force=True)
    replaced = SearchIndex.load(index_copy)
    assert len(replaced) == 50 and replaced.dim == 8
    # Only the current and the previous generation stay on disk.
    generations = [p for p in index_copy.iterdir() if p.is_dir()]
    assert len(generations) <= 2


def test_failed_save_leaves_the_old_index(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simsearch import vector_index

    index = SearchIndex.load(index_copy)

    def broken_save(index: object, path: Path) -> None:
        path.write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(vector_index, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        index.save(index_copy)
    assert len(SearchIndex.load(index_copy)) == 400
    assert not [p for p in index_copy.iterdir() if p.name.startswith(".staging")]


def test_label_names_and_fields(pca_index_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    hit = index.query(np.asarray(index.images[0]), k=1)[0]
    assert hit.label == int(index.labels[0])
    assert (
        hit.label_name
        == [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ][hit.label]
    )
    assert set(hit.to_dict()) == {
        "rank",
        "id",
        "label",
        "label_name",
        "similarity",
        "distance",
        "source",
    }


def test_committed_format_1_index_keeps_loading() -> None:
    """tests/indices/v1 was written by format 1; every later version must still read it."""
    directory = Path(__file__).parent / "indices" / "v1"
    index = SearchIndex.load(directory)
    assert len(index) == 30 and index.dim == 4
    assert index.manifest["format_version"] == 1
    for row in (0, 17, 29):
        hit = index.query(np.asarray(index.images[row]), k=1)[0]
        assert hit.id == f"fashion-mnist/train/{row:05d}" and hit.distance < 1e-4


def test_index_returned_by_build_keeps_working(fake_data_dir: Path, tmp_path: Path) -> None:
    """The temporary build folder is gone; the returned index must embed large batches."""
    config = BuildConfig(data_dir=str(fake_data_dir), train=TrainConfig(model="pca", code_size=8))
    index = build_index(config, tmp_path / "built")
    assert index.encoder_file.is_relative_to(tmp_path / "built")
    assert index.embed_pixels(np.asarray(index.images)).shape == (400, 8)


def test_auto_index_type_follows_catalog_size() -> None:
    from simsearch.vector_index import FLAT_UP_TO, HNSW_UP_TO, choose_type

    assert choose_type("auto", 60_000) == "hnsw"
    assert choose_type("auto", FLAT_UP_TO) == "flat"
    assert choose_type("auto", FLAT_UP_TO + 1) == "hnsw"
    assert choose_type("auto", HNSW_UP_TO + 1) == "ivf"
    assert choose_type("ivf", 10) == "ivf"  # an explicit choice is kept
    with pytest.raises(ConfigError, match="unknown --index-type 'annoy'"):
        choose_type("annoy", 10)


def test_auto_build_records_the_chosen_type(
    fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The small fake catalog gets an exact index; lower the threshold and it gets HNSW."""
    config = BuildConfig(data_dir=str(fake_data_dir), train=TrainConfig(model="pca", code_size=8))
    assert build_index(config, tmp_path / "small").manifest["index"]["type"] == "flat"
    monkeypatch.setattr("simsearch.vector_index.FLAT_UP_TO", 100)
    index = build_index(config, tmp_path / "hnsw")
    assert index.manifest["index"]["type"] == "hnsw"
    assert index.manifest["index"]["params"]["efSearch"] == 64
    loaded = SearchIndex.load(tmp_path / "hnsw")
    assert type(loaded.faiss_index).__name__ == "IndexHNSWFlat"
    row = 17
    hit = loaded.query_pixels(np.asarray(loaded.images[row : row + 1]), k=1)[0][0]
    assert hit.id == str(loaded.ids[row]) and hit.distance < 1e-4
