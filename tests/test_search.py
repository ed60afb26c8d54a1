"""The search layer for pipelines: filters inside the search, thresholds, arrays in and out,
large k, shards."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simsearch import SearchIndex, vector_index
from simsearch.cli import app
from simsearch.encoders import normalize
from simsearch.errors import ConfigError
from simsearch.search_index import MAX_K
from tests.fakedata import make_images

runner = CliRunner()
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker"]


def exact(index: SearchIndex, vectors: np.ndarray, k: int, mask: np.ndarray | None = None):
    """Ground truth: exact cosine top-k over the allowed rows (ties by row)."""
    rows = np.arange(len(index)) if mask is None else np.flatnonzero(mask)
    sims = vectors @ index.vectors[rows].T
    order = np.lexsort((np.broadcast_to(rows, sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), rows[order]


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray]:
    return make_images(3000, seed=31)


def make_index(catalog: tuple[np.ndarray, np.ndarray], kind: str, **params: Any) -> SearchIndex:
    """A PCA-16 index of the 3,000 fake items, with class names, of the given FAISS type."""
    from simsearch.encoders import LinearEncoder, fit_pca

    images, labels = catalog
    n = len(images)
    mean, components = fit_pca(images, 16)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, components=components)
    encoder = LinearEncoder(Path("encoder.npz"), buffer.getvalue())
    vectors = normalize(encoder.encode(images))
    manifest = {
        "embedding_dim": 16,
        "catalog": {"label_names": [*NAMES, "Bag", "Ankle boot"]},
        "index": {"type": kind, "params": {**vector_index.default_params(kind, n), **params}},
        "model": {"model": "pca", "encoder_file": "encoder.npz"},
    }
    return SearchIndex(
        encoder=encoder,
        encoder_file=Path("encoder.npz"),
        vectors=vectors,
        ids=np.asarray([f"shop/{'shoes' if i % 3 else 'bags'}/{i:05d}" for i in range(n)]),
        labels=labels.astype(np.int16),
        sources=np.asarray([""] * n),
        images=images,
        manifest=manifest,
    )


@pytest.fixture(scope="module", params=["flat", "hnsw", "ivf", "ivf-fastscan"])
def index(request: pytest.FixtureRequest, catalog: tuple[np.ndarray, np.ndarray]) -> SearchIndex:
    # A small efSearch and nprobe, so that the approximate searches come back short.
    params = {"hnsw": {"efSearch": 8, "M": 8}, "ivf": {"nprobe": 1}, "ivf-fastscan": {"nprobe": 1}}
    params = params.get(request.param, {})
    return make_index(catalog, request.param, **params)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return make_images(40, seed=32)[0]


def test_large_k_returns_k_real_hits(index: SearchIndex, queries: np.ndarray) -> None:
    vectors = index.embed(queries)
    for k in (10, 500, MAX_K):
        scores, rows = index.search(vectors, k)
        assert rows.shape == (40, k) and (rows >= 0).all()
        assert all(len(set(r)) == k for r in rows.tolist())
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert all(len(hits) == MAX_K for hits in index.query_batch(queries[:3], k=MAX_K))
    with pytest.raises(ConfigError, match="between 1 and 1000"):
        index.query(queries[0], k=MAX_K + 1)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"labels": ["Sneaker"]}, lambda ix: ix.labels == 7),
        ({"labels": ["7", 2]}, lambda ix: np.isin(ix.labels, [2, 7])),
        ({"id_prefix": "shop/bags/"}, lambda ix: np.char.startswith(ix.ids, "shop/bags/")),
        (
            {"labels": [4], "id_prefix": "shop/bags/00"},
            lambda ix: (ix.labels == 4) & np.char.startswith(ix.ids, "shop/bags/00"),
        ),
    ],
)
def test_filters_return_k_matching_items(
    index: SearchIndex, queries: np.ndarray, filters: dict[str, Any], expected: Any
) -> None:
    mask = expected(index)
    vectors = index.embed(queries)
    k = min(10, int(mask.sum()))
    truth_scores, truth_rows = exact(index, vectors, k, mask)
    scores, rows = index.search(vectors, 10, **filters)
    assert rows.shape == (40, k) and mask[rows].all()
    if index.searcher.kind == "flat" or mask.sum() <= 8192:  # exact either way
        np.testing.assert_array_equal(rows, truth_rows)
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    for hits in index.query_batch(queries, k=10, **filters):
        assert len(hits) == k


def test_a_broad_filter_on_a_large_index_uses_the_index(queries: np.ndarray) -> None:
    """Above the exact-search cut-off the filter runs inside FAISS: still k matching hits."""
    images, labels = make_images(20_000, seed=5)
    big = make_index((images, labels), "hnsw", efSearch=16, M=16)
    odd = big.labels % 2 == 1  # half the catalog: 10,000 items, over the exact cut-off
    scores, rows = big.search(big.embed(queries), 50, labels=[1, 3, 5, 7, 9])
    assert rows.shape == (40, 50) and odd[rows].all()
    truth, _ = exact(big, big.embed(queries), 50, odd)
    assert np.mean(np.abs(scores - truth) < 1e-5) > 0.9  # recall of the filtered HNSW


def test_exclude_ids_and_empty_filters(index: SearchIndex, queries: np.ndarray) -> None:
    first = index.query(queries[0], k=3)
    again = index.query(queries[0], k=3, exclude_ids=[first[0].id, "no-such-id"])
    assert first[0].id not in {h.id for h in again} and len(again) == 3
    assert again[0].id == first[1].id and again[0].rank == 1
    assert index.query(queries[0], k=5, id_prefix="nothing/") == []
    assert index.query_batch(queries[:2], k=5, labels=[8], id_prefix="nothing/") == [[], []]
    with pytest.raises(ConfigError, match="unknown label 'Sock'"):
        index.query(queries[0], labels=["Sock"])
    with pytest.raises(ConfigError, match="out of range"):
        index.query(queries[0], labels=[12])


def test_thresholds(index: SearchIndex, queries: np.ndarray) -> None:
    hits = index.query(queries[0], k=50)
    cut = hits[20].similarity
    kept = index.query(queries[0], k=50, min_similarity=cut)
    assert all(h.similarity >= cut for h in kept) and 20 <= len(kept) < 50
    assert index.query(queries[0], k=50, max_distance=1 - cut) == kept
    assert index.query(queries[0], k=5, min_similarity=1.0) == []
    ids, sims = index.search_arrays(queries[:1], 50, min_similarity=cut)
    assert (ids[0][len(kept) :] == "").all() and np.isnan(sims[0][len(kept) :]).all()
    for bad in ({"min_similarity": 1.5}, {"max_distance": -0.1}, {"min_similarity": "high"}):
        with pytest.raises(ConfigError):
            index.query(queries[0], **bad)


def test_arrays_in_and_out(index: SearchIndex, queries: np.ndarray) -> None:
    ids, sims = index.search_arrays(queries, k=5)
    assert ids.shape == sims.shape == (40, 5) and sims.dtype == np.float32
    assert ids.dtype.kind == "U"
    batches = index.query_batch(queries, k=5)
    assert ids.tolist() == [[h.id for h in hits] for hits in batches]
    np.testing.assert_allclose(sims, [[h.similarity for h in hits] for hits in batches], atol=1e-6)
    from_vectors = index.search_arrays(index.embed(queries) * 3.0, k=5)  # normalised here
    assert from_vectors[0].tolist() == ids.tolist()
    _, rows = index.search(index.embed(queries), 5)
    assert index.ids_for(rows).tolist() == ids.tolist()
    assert index.ids_for(np.array([[-1, rows[0, 0]]])).tolist() == [["", ids[0, 0]]]


def test_batches_of_any_shape_and_empty_ones(index: SearchIndex, queries: np.ndarray) -> None:
    expected = index.embed(queries[:4])
    for shaped in (
        queries[:4, :, :, None],
        queries[:4, None, :, :],
        queries[:4].reshape(4, 784),
        queries[:4].astype(np.float32) / 255.0,
    ):
        np.testing.assert_allclose(index.embed(shaped), expected, atol=1e-6)
    assert index.embed([]).shape == (0, 16)
    assert index.embed(np.zeros((0, 28, 28), np.uint8)).shape == (0, 16)
    assert index.query_batch([]) == []
    assert index.query_batch(np.zeros((0, 28, 28), np.uint8)) == []
    ids, sims = index.search_arrays([], k=3)
    assert ids.shape == sims.shape == (0, 3)
    ids, sims = index.search_arrays(np.zeros((0, index.dim), np.float32), k=3)
    assert ids.shape == sims.shape == (0, 3)


def test_an_item_matched_with_itself_is_exactly_one(index: SearchIndex) -> None:
    hit = index.query(np.asarray(index.images[17]), k=1)[0]
    assert hit.id == str(index.ids[17]) and hit.similarity == 1.0 and hit.distance == 0.0
    assert json.loads(json.dumps(hit.to_dict()))["similarity"] == 1.0
    # As shown, so judged: 1.0 passes min_similarity=1.0 and distance 0 max_distance=0, also
    # where float32 gives 0.9999999 (about a third of these items); the arrays say 1.0 too.
    items = np.asarray(index.images[:60])
    ids, sims = index.search_arrays(items, k=1)
    assert ids[:, 0].tolist() == [str(i) for i in index.ids[:60]] and (sims == 1.0).all()
    for threshold in ({"min_similarity": 1.0}, {"max_distance": 0.0}):
        found = index.query_batch(items, k=3, **threshold)
        assert [[h.id for h in hits] for hits in found] == [[str(i)] for i in index.ids[:60]]


# ---------------------------------------------------------------------- shards


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivf-fastscan"])
def test_sharded_search_matches_one_index(
    catalog: tuple[np.ndarray, np.ndarray], queries: np.ndarray, kind: str, tmp_path: Path
) -> None:
    one = make_index(catalog, kind, **({"nprobe": 4} if kind == "ivf" else {}))
    params = one.searcher.params
    sizes = vector_index.shard_sizes(len(one), 4)
    shards = vector_index.build_shards(one.vectors, kind, params, sizes)
    if kind == "ivf":  # the same trained quantizer as the unsharded one: the same answers
        empty = vector_index.trained_empty(one.vectors, kind, params)
        one = make_index(catalog, kind, nprobe=4)
        one._version = one._version.__class__(
            one.vectors, one.ids, one.labels, one.sources, one.images,
            vector_index.VectorIndex(vector_index.filled(empty, one.vectors), kind, params),
        )  # fmt: skip
    sharded = make_index(catalog, kind)
    sharded._version = sharded._version.__class__(
        sharded.vectors, sharded.ids, sharded.labels, sharded.sources, sharded.images, shards
    )
    vectors = one.embed(queries)
    for filters in ({}, {"labels": [3, 5]}, {"id_prefix": "shop/bags/"}):
        a_scores, a_rows = one.search(vectors, 20, **filters)
        b_scores, b_rows = sharded.search(vectors, 20, **filters)
        if kind in ("hnsw", "ivf-fastscan"):  # separate graphs, re-ranking per shard:
            # both close to the truth instead
            _, truth = exact(one, vectors, 20, one._version.allowed(one._where(**filters)))
            for rows in (a_rows, b_rows):
                found = np.mean(
                    [len(set(r) & set(t)) / 20 for r, t in zip(rows, truth, strict=True)]
                )
                assert found > 0.9
            continue
        np.testing.assert_array_equal(b_rows, a_rows)
        np.testing.assert_allclose(b_scores, a_scores, atol=1e-6)
    # A sharded index is saved, verified and loaded like any other, and takes changes.
    sharded.manifest["format_version"] = 2
    sharded.manifest["metric"] = "cosine"
    sharded.manifest["count"] = len(sharded)
    sharded.save(tmp_path / "sharded")
    loaded = SearchIndex.load(tmp_path / "sharded")
    assert loaded.manifest["index"]["shards"] == sizes
    assert {f"index-{i:03d}.faiss" for i in range(4)} <= set(loaded.manifest["files"])
    assert runner.invoke(app, ["verify", "--index-dir", str(tmp_path / "sharded")]).exit_code == 0
    np.testing.assert_array_equal(loaded.search(vectors, 20)[1], sharded.search(vectors, 20)[1])
    loaded.add(queries[:2], ["new/0", "new/1"])
    loaded.remove([str(loaded.ids[0]), str(loaded.ids[1500])])
    loaded.save(tmp_path / "sharded")
    again = SearchIndex.load(tmp_path / "sharded")
    assert again.manifest["index"]["shards"][-1] == sizes[-1] + 2 and len(again) == 3000
    assert again.query(queries[1], k=1)[0].id == "new/1"


# ---------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("queries")
    index = SearchIndex.load(pca_index_dir)
    for row in (3, 7, 11):
        sub = folder / ("a" if row < 10 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(index.images[row])).save(sub / f"item{row}.png")
    return folder


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_query_a_folder_and_a_list_streaming_json(pca_index_dir: Path, photos: Path) -> None:
    listing = photos / "list.txt"
    listing.write_text(f"# queries\n{photos / 'a' / 'item3.png'}\n\n{photos / 'missing.png'}\n")
    result = cli("query", photos, "--from-list", listing, "--json", "-k", "2",
                 "--index-dir", pca_index_dir)  # fmt: skip
    assert result.exit_code == 1  # the missing file, reported in its line
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["query"]).name for r in records] == [
        "item3.png", "item7.png", "item11.png", "item3.png", "missing.png"
    ]  # fmt: skip
    assert records[0]["results"][0]["id"] == "fashion-mnist/train/00003"
    assert records[0]["results"][0]["similarity"] == 1.0 and "error" in records[-1]


def test_query_a_list_that_names_no_image(pca_index_dir: Path, photos: Path) -> None:
    listing = photos / "empty.txt"
    listing.write_text("# nothing to do today\n\n")
    result = cli("query", "--from-list", listing, "--index-dir", pca_index_dir)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no image paths listed" in result.stderr


def test_query_filters_thresholds_and_csv(pca_index_dir: Path, photos: Path) -> None:
    item = photos / "a" / "item7.png"
    label = SearchIndex.load(pca_index_dir).label_name_of(7)
    result = cli("query", item, "--label", label, "--csv", "-k", "5", "--index-dir",
                 pca_index_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 5 and {r["label_name"] for r in rows} == {label}
    assert rows[0]["id"] == "fashion-mnist/train/00007" and rows[0]["source"] == ""
    cut = cli("query", item, "--min-similarity", "0.999", "--json", "--index-dir", pca_index_dir)
    assert [h["id"] for h in json.loads(cut.stdout)["results"]] == ["fashion-mnist/train/00007"]
    nothing = cli("query", item, "--id-prefix", "nope/", "--index-dir", pca_index_dir)
    assert nothing.exit_code == 0 and "no hits" in nothing.stdout
    for bad in (["--label", "Sock"], ["--min-similarity", "2"]):
        wrong = cli("query", item, *bad, "--index-dir", pca_index_dir)
        assert wrong.exit_code == 1 and wrong.stderr.count("\n") == 1, wrong.output
    assert cli("query", item, "-k", "1001", "--index-dir", pca_index_dir).exit_code == 2


def test_an_index_travels_to_another_process(pca_index_dir: Path) -> None:
    index = SearchIndex.load(pca_index_dir)
    clone = pickle.loads(pickle.dumps(index))
    assert clone.query(np.asarray(index.images[5]), k=1)[0].id == "fashion-mnist/train/00005"
    with SearchIndex.load(pca_index_dir) as scoped:
        assert len(scoped) == 400
    with pytest.raises(ConfigError, match="closed"):
        scoped.query(np.asarray(index.images[5]))
    assert "400 items" in repr(index)


def test_hnsw_nodes_the_graph_cannot_reach_are_still_found(tmp_path: Path) -> None:
    """A sparse graph (M 4, efConstruction 8) leaves many nodes unreachable from its entry
    point; they are scored exactly on every search, so every item finds itself."""
    from simsearch.encoders import normalize

    rng = np.random.default_rng(0)
    vectors = normalize(rng.normal(size=(4000, 16)).astype(np.float32))
    sparse = vector_index.VectorIndex.build(
        vectors, "hnsw", {"M": 4, "efConstruction": 8, "efSearch": 8}
    )
    _, raw = sparse.index.search(vectors, 1)
    assert np.mean(raw[:, 0] == np.arange(4000)) < 0.95  # the bare graph misses items
    assert sparse.unreachable is not None and len(sparse.unreachable) > 100
    _, rows = sparse.search(vectors, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(4000))
    lost = sparse.unreachable[:50]
    allowed = np.zeros(4000, bool)
    allowed[lost] = True
    _, rows = sparse.search(vectors[lost], 3, allowed)
    assert set(rows.ravel()) <= set(lost) and (rows[:, 0] == lost).all()
    grown = sparse.added(vectors[:10] * -1)  # new nodes are checked too
    assert grown.unreachable is not None and len(grown.unreachable) >= len(sparse.unreachable)
    writers = vector_index.file_writers(grown)
    assert "hnsw_unreachable.npy" in writers
    for name, write in writers.items():
        write(tmp_path / name)
    reopened = vector_index.open_searcher(
        {"type": "hnsw", "params": grown.params}, set(writers), lambda name: tmp_path / name
    )
    assert isinstance(reopened, vector_index.VectorIndex)
    np.testing.assert_array_equal(reopened.unreachable, grown.unreachable)
