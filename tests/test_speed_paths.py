"""The fast paths give the answers of the plain ones: batches in chunks on threads, cheap Hits,
the one-thread search of a single query, and the fast-scan IVF-PQ index with re-ranking."""

from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from simsearch import Hit, SearchIndex, parallel, vector_index
from simsearch.cli import app
from simsearch.errors import ConfigError
from simsearch.hit import many_objects, ranked_hits
from simsearch.vector_index import FASTSCAN
from tests.conftest import with_index_type
from tests.fakedata import make_images


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """More images than fit one chunk, so that a batch is shared out to several threads."""
    return make_images(3 * parallel.CHUNK + 17, seed=41)[0]


def test_a_batch_on_threads_answers_like_one_query_at_a_time(
    onnx_index_dir: Path, queries: np.ndarray
) -> None:
    index = SearchIndex.load(onnx_index_dir)  # the ONNX Runtime encoder of a trained model
    index.threads = 2
    batch = index.query_batch(queries, k=7)
    assert len(batch) == len(queries)
    assert batch[: len(queries) : 40] == [index.query(q, k=7) for q in queries[::40]]
    index.threads = 1  # everything in the calling thread
    assert index.query_batch(queries, k=7) == batch
    one_thread = index.embed(queries)
    index.threads = 2
    np.testing.assert_array_equal(index.embed(queries), one_thread)
    ids, sims = index.search_arrays(queries, k=7)
    assert ids.tolist() == [[h.id for h in hits] for hits in batch]
    np.testing.assert_allclose(sims, [[h.similarity for h in hits] for hits in batch], atol=1e-6)
    _, rows = index.search(one_thread, 7)
    assert index.ids_for(rows).tolist() == ids.tolist()
    # A filter this narrow is answered by exact search in numpy, whose sums of products differ
    # in the last bit between a matrix of queries and a single one: similarities to 1e-6.
    filtered = index.query_batch(queries, k=3, labels=[2, 4], min_similarity=0.5)
    singles = [index.query(q, k=3, labels=[2, 4], min_similarity=0.5) for q in queries]
    assert [[h.id for h in hits] for hits in filtered] == [[h.id for h in s] for s in singles]
    np.testing.assert_allclose(
        [h.similarity for hits in filtered for h in hits],
        [h.similarity for hits in singles for h in hits],
        atol=2e-6,
    )


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(pca_index_dir: Path, bad: object) -> None:
    index = SearchIndex.load(pca_index_dir)
    with pytest.raises(ConfigError, match="threads"):
        index.threads = bad  # type: ignore[assignment]
    index.threads = None  # back to every core
    assert index.threads == parallel.available_cores()


def test_chunks_cover_the_batch_in_near_equal_parts() -> None:
    assert parallel.chunks(0, 2) == []
    assert parallel.chunks(10, 4) == [slice(0, 10)]  # too little work to share
    for n, threads in ((1, 1), (100, 2), (1000, 2), (10_000, 2), (10_000, 8), (129, 1)):
        parts = parallel.chunks(n, threads)
        covered = np.concatenate([np.arange(n)[p] for p in parts])
        np.testing.assert_array_equal(covered, np.arange(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) <= parallel.CHUNK and max(sizes) - min(sizes) <= 1
        if n >= threads * parallel.CHUNK // 4:
            assert len(parts) >= threads


def test_fast_hits_are_the_same_hits() -> None:
    fields = ("fashion-mnist/train/00042", 9, "Ankle boot", None)
    made = ranked_hits([(fields, 0.9871, 0.0129), (fields, 0.5, 0.5)], first_rank=3)
    plain = Hit(3, "fashion-mnist/train/00042", 9, "Ankle boot", 0.9871, 0.0129, None)
    assert made[0] == plain and hash(made[0]) == hash(plain) and repr(made[0]) == repr(plain)
    assert made[1].rank == 4 and made[0] != made[1]
    assert Hit.make(3, *fields[:3], 0.9871, 0.0129, None) == plain
    assert pickle.loads(pickle.dumps(made[0])) == plain
    assert dataclasses.asdict(made[0]) == plain.to_dict() == made[0].to_dict()
    assert json.loads(json.dumps(made[0].to_dict()))["label_name"] == "Ankle boot"
    with pytest.raises(dataclasses.FrozenInstanceError):
        made[0].rank = 1  # type: ignore[misc]


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collection_comes_back_as_it_was(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with many_objects():
            assert not gc.isenabled()
        assert gc.isenabled() == enabled
        with pytest.raises(KeyError), many_objects():
            raise KeyError("a failure inside")
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def _batch_in_child(index_dir: str, pixels: np.ndarray, out: multiprocessing.Queue) -> None:
    index = SearchIndex.load(index_dir)
    out.put([h.id for h in index.query_batch(pixels, k=1)[0]] + [len(index.query_batch(pixels))])


def test_a_forked_child_can_run_batches_too(onnx_index_dir: Path, queries: np.ndarray) -> None:
    """The parent's worker threads do not exist in a forked child: it starts its own."""
    index = SearchIndex.load(onnx_index_dir)
    index.threads = 2
    expected = [h.id for h in index.query_batch(queries, k=1)[0]] + [len(queries)]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_batch_in_child, args=(str(onnx_index_dir), queries, out))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert out.get(timeout=5) == expected


def test_the_search_call_leaves_the_thread_setting_as_it_was() -> None:
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = vector_index.build(vectors, "flat")
    before = faiss.omp_get_max_threads()
    for n, threads in ((1, None), (50, 1), (50, None), (1, 2)):
        _, rows = vector_index.search(index, vectors[:n], 3, threads=threads)
        np.testing.assert_array_equal(rows[:, 0], np.arange(n))
        assert faiss.omp_get_max_threads() == before


# ---------------------------------------------------------------------- ivf-fastscan


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered unit vectors: neighbours that mean something, as embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fastscan_holds_a_tenth_of_flat_and_reranks_to_exact_scores() -> None:
    import faiss

    catalog, queries = unit_rows(20_000, 64, seed=1), unit_rows(200, 64, seed=2)
    params = vector_index.default_params("ivf-fastscan", len(catalog))
    fast = vector_index.VectorIndex.build(catalog, "ivf-fastscan", params)
    flat = vector_index.VectorIndex.build(catalog, "flat", {})

    def size(index: object) -> int:
        return len(faiss.serialize_index(index))

    assert size(fast.index) < size(flat.index) / 8  # 4-bit codes: d/2 bytes + an id per item
    true_scores, truth = flat.search(queries, 10)

    def recall(rows: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)]))

    scores, rows = fast.search(queries, 10, catalog=catalog)
    assert recall(rows) > 0.9
    # Re-ranked scores are exact inner products, best first.
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, catalog[rows]), atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    approx_scores, approx_rows = fast.search(queries, 10)  # no catalog: the codes' estimates
    assert not np.allclose(approx_scores, true_scores, atol=1e-3)
    assert recall(approx_rows) < recall(rows) - 0.1


def test_fastscan_index_from_the_cli(fake_data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "idx"
    result = CliRunner().invoke(
        app,
        [
            "build-index", "--model", "pca", "--code-size", "16", "--index-type", "ivf-fastscan",
            "--data-dir", str(fake_data_dir), "--index-dir", str(target), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(target)
    conf = index.manifest["index"]
    assert conf["type"] == "ivf-fastscan" and conf["params"]["refine"] == 32
    item = np.asarray(index.images[11])
    hit = index.query(item, k=1)[0]
    assert hit.id == "fashion-mnist/train/00011" and hit.similarity == 1.0
    index.remove(["fashion-mnist/train/00011"])
    index.add(np.asarray(index.images[:1]) // 2, ["half-of-0"])
    index.save(target)
    again = SearchIndex.load(target)
    assert len(again) == 400
    assert again.query(np.asarray(again.images[-1]), k=1)[0].id == "half-of-0"
    assert "fashion-mnist/train/00011" not in {h.id for h in again.query(item, k=5)}


# ---------------------------------------------------------------------- batches of real images


@pytest.fixture(scope="module")
def real_catalog() -> tuple[SearchIndex, np.ndarray]:
    """A flat index of 6,000 real Fashion-MNIST items with a PCA encoder, and 700 real test
    images to query it with (several chunks of a batch)."""
    import io

    from simsearch.data import load_items, load_split
    from simsearch.encoders import LinearEncoder, fit_pca, normalize
    from tests.conftest import real_data_or_skip

    data_dir = real_data_or_skip()
    images, labels, ids = load_items("train", limit=6000, data_dir=data_dir)
    mean, components = fit_pca(images, 16)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, components=components)
    encoder = LinearEncoder(Path("encoder.npz"), buffer.getvalue())
    manifest = {
        "embedding_dim": 16,
        "catalog": {"label_names": ["T-shirt/top", "Trouser", "Pullover"]},  # some unnamed
        "index": {"type": "flat"},
        "model": {"model": "pca", "encoder_file": "encoder.npz"},
    }
    index = SearchIndex(
        encoder=encoder,
        encoder_file=Path("encoder.npz"),
        vectors=normalize(encoder.encode(images)),
        ids=np.asarray(ids),
        labels=labels.astype(np.int16),
        sources=np.asarray([f"/shop/{i}.png" if i % 2 else "" for i in range(len(ids))]),
        images=images,
        manifest=manifest,
    )
    return index, load_split("test", data_dir).images[:700]


def plain_hits(index: SearchIndex, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
    """Hits made one by one with ``Hit(...)`` from one query's search arrays."""
    out = []
    for query_scores, query_rows in zip(scores.tolist(), rows.tolist(), strict=True):
        hits: list[Hit] = []
        for score, row in zip(query_scores, query_rows, strict=True):
            if row < 0:
                continue
            label = index.label_of(row)
            similarity = float(np.round(score, 6))  # float32 scores, rounded as float64
            hits.append(
                Hit(
                    len(hits) + 1,
                    str(index.ids[row]),
                    label,
                    index.label_name_of(row),
                    similarity,
                    float(np.round(1.0 - similarity, 6)),
                    str(index.sources[row]) or None,
                )
            )
        out.append(hits)
    return out


@pytest.mark.parametrize(("kind", "removed"), [("hnsw", False), ("hnsw", True), (FASTSCAN, False)])
def test_batches_answer_like_single_queries_on_real_images(
    real_catalog: tuple[SearchIndex, np.ndarray], kind: str, removed: bool
) -> None:
    """A batch is searched in chunks on threads, its queries regrouped by where they lead in the
    catalog, its Hits made column by column: the same answers as one query at a time, and the
    one-query HNSW search gives what FAISS's own search gives."""
    index = with_index_type(real_catalog[0], kind)
    images = real_catalog[1]
    if removed:  # tombstones: FAISS positions mapped to catalog rows, removed ones skipped
        index.remove([str(i) for i in index.ids[::50]])
        assert index.searcher.tombstones
    index.threads = 2
    vectors = index.embed(images)
    singles = [index.search(vectors[i : i + 1], 10) for i in range(len(vectors))]
    scores = np.concatenate([s for s, _ in singles])
    rows = np.concatenate([r for _, r in singles])
    if kind == "hnsw" and not removed:
        bare_scores, bare_rows = index.faiss_index.search(vectors, 10)
        np.testing.assert_array_equal(rows, bare_rows)
        np.testing.assert_array_equal(scores, np.clip(bare_scores, -1, 1))
    batch_scores, batch_rows = index.search(vectors, 10)
    np.testing.assert_array_equal(batch_rows, rows)
    np.testing.assert_array_equal(batch_scores, scores)
    ids, similarities = index.search_arrays(images, k=10)
    assert ids.tolist() == index.ids_for(rows).tolist()
    np.testing.assert_array_equal(similarities, np.round(scores, 6))  # as Hits show them
    assert index.query_batch(images, k=10) == plain_hits(index, scores, rows)
    index.threads = 1
    assert index.query_batch(images, k=10) == plain_hits(index, scores, rows)
    # A threshold leaves some queries fewer hits (rows -1 in the arrays).
    index.threads = 2
    cut = [index.search(vectors[i : i + 1], 10, min_similarity=0.9) for i in range(len(vectors))]
    cut_scores = np.concatenate([s for s, _ in cut])
    cut_rows = np.concatenate([r for _, r in cut])
    assert 0 < np.count_nonzero(cut_rows < 0) < cut_rows.size
    expected = plain_hits(index, cut_scores, cut_rows)
    assert index.query_batch(images, k=10, min_similarity=0.9) == expected
