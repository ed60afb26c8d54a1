"""On a real Ray cluster started here (``ray.cluster_utils.Cluster``: a head and two worker
nodes, each a raylet of its own): embed --ray equals the in-process run, sharded builds equal
unsharded ones, a worker node killed mid-embed loses and duplicates nothing, the CLI end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from simsearch import SearchIndex, parquet
from simsearch.build import build_from_embeddings
from simsearch.data import item_id, load_split
from simsearch.embeddings import EmbedConfig, embed
from tests.conftest import ray_or_skip, real_data_or_skip
from tests.fakedata import save_onnx_index

ray = ray_or_skip()
pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
CATALOG = 20_000  # items of the Fashion-MNIST train split embedded on the cluster
HIDDEN = 2048  # the test encoder's width: about the work per image of the default model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index whose ONNX encoder embeds the catalogs (real Fashion-MNIST items)."""
    train = load_split("train", real_data_or_skip())
    directory = tmp_path_factory.mktemp("model") / "index"
    return save_onnx_index(directory, train.images[:1000], train.labels[:1000], hidden=HIDDEN)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder catalog: 1,500 real test items as PNG files in class folders, one broken file."""
    test = load_split("test", real_data_or_skip())
    folder = tmp_path_factory.mktemp("photos")
    for i in range(1500):
        sub = folder / f"class{test.labels[i]}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(test.images[i]).save(sub / f"{i:05d}.png")
    (folder / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return folder


@pytest.fixture(scope="module")
def embedded_here(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Path:
    """The Fashion-MNIST catalog embedded in this process."""
    out = tmp_path_factory.mktemp("here") / "emb"
    embed(fashion_mnist(), model, out)
    return out


def fashion_mnist(batch_size: int = 2000) -> EmbedConfig:
    return EmbedConfig(limit=CATALOG, data_dir=str(real_data_or_skip()), batch_size=batch_size)


def read(folder: Path) -> parquet.Embeddings:
    return parquet.read(sorted(folder.glob("part-*.parquet")))


def same_answers(a: SearchIndex, b: SearchIndex, queries: np.ndarray, k: int = 20) -> None:
    ids_a, sims_a = a.search_arrays(queries, k)
    ids_b, sims_b = b.search_arrays(queries, k)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(sims_a, sims_b, atol=1e-6)


def test_embed_on_the_cluster_equals_the_run_in_process(
    cluster: Any, model: Path, photos: Path, tmp_path: Path
) -> None:
    config = EmbedConfig(catalog=str(photos), labels_from_folders=True, batch_size=200)
    there = embed(config, model, tmp_path / "there", ray=cluster.address)
    here = embed(config, model, tmp_path / "here")
    assert there.count == here.count == 1500 and there.parts == 8
    assert (
        there.skipped
        == here.skipped
        == [{"path": str(photos / "class0" / "broken.png"), "error": here.skipped[0]["error"]}]
    )
    a, b = read(tmp_path / "there"), read(tmp_path / "here")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sources, b.sources)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert a.label_names == b.label_names == [f"class{i}" for i in range(10)]
    # The vectors are the ones a query of the same file gets.
    index = SearchIndex.load(model)
    first = photos / a.ids[0]
    np.testing.assert_allclose(index.embed([first])[0], a.vectors[0], atol=1e-5)


def test_workers_that_cannot_read_the_output_folder_fail_the_job_in_one_line(
    cluster: Any, model: Path, tmp_path: Path
) -> None:
    """As on a cluster whose nodes do not share the output folder: the encoder copy is not
    there for the actors. The job fails with the actors' own error, and does not hang."""
    from simsearch import distributed
    from simsearch.embeddings import EmbedParts, catalog_items
    from simsearch.errors import IndexCorruptError

    items = catalog_items(EmbedConfig(limit=100, data_dir=str(real_data_or_skip())))
    kwargs = {"folder": str(tmp_path), "encoder_name": "encoder.onnx", "encoder_sha256": "0" * 64,
              "metadata": "{}", "threads": 1}  # fmt: skip
    started = time.monotonic()
    with pytest.raises(IndexCorruptError, match="shares"):
        distributed.run_actor_pool(cluster.address, items.batches, EmbedParts, kwargs, 1, False)
    assert time.monotonic() - started < 120


def test_sharded_builds_on_the_cluster_equal_unsharded_ones(
    cluster: Any, embedded_here: Path, tmp_path: Path
) -> None:
    test = load_split("test", real_data_or_skip()).images[:300]

    def built(name: str, **options: Any) -> SearchIndex:
        return build_from_embeddings(embedded_here, tmp_path / name, **options)

    flat1 = built("flat1", index_type="flat")
    flat4 = built("flat4", index_type="flat", shards=4, ray=cluster.address)
    assert flat4.manifest["index"]["shards"] == [5000] * 4
    vectors = flat1.embed_pixels(test)
    same_answers(flat1, flat4, vectors)
    same_answers(flat1, SearchIndex.load(tmp_path / "flat4"), vectors)

    params = {"nlist": 64, "nprobe": 4}
    ivf1 = built("ivf1", index_type="ivf", index_params=params)
    ivf4 = built("ivf4", index_type="ivf", index_params=params, shards=4, ray=cluster.address)
    same_answers(ivf1, ivf4, vectors)

    hnsw4 = built("hnsw4", index_type="hnsw", shards=4, ray=cluster.address)
    truth, _ = flat1.search_arrays(vectors, 10)
    found, _ = SearchIndex.load(tmp_path / "hnsw4").search_arrays(vectors, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.97 and len(hnsw4) == CATALOG


def test_a_worker_node_dying_mid_embed_loses_and_duplicates_nothing(
    cluster: Any, model: Path, embedded_here: Path, tmp_path: Path
) -> None:
    # The actors' nodes from the cluster's own table (GCS), not the state API: that one needs
    # the dashboard, which a loaded machine may not have started yet.
    from ray._private.state import actors as actor_table

    out = tmp_path / "emb"
    config = fashion_mnist(batch_size=400)  # 50 parts
    killed: dict[str, Any] = {}

    def kill_a_worker_node_once_parts_appear() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            parts = list(tmp_path.glob(".emb.staging-*/part-*.parquet"))
            if len(parts) >= 3:
                table = actor_table(actor_state_name="ALIVE").values()
                busy = {
                    a["Address"]["NodeID"] for a in table if "EmbedParts" in a["ActorClassName"]
                }
                workers = [n for n in cluster.worker_nodes if n.node_id in busy]
                if workers:
                    cluster.remove_node(workers[0])
                    killed.update(node=workers[0].node_id, parts_done=len(parts))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_node_once_parts_appear, daemon=True)
    killer.start()
    try:
        result = embed(config, model, out, ray=cluster.address)
    finally:
        killer.join(timeout=130)
        cluster.add_node(num_cpus=1, object_store_memory=128 * 1024 * 1024)  # for later tests
    assert killed and killed["parts_done"] < 50, killed  # the node died while work remained
    assert result.count == CATALOG and result.parts == 50
    items = read(out)
    assert items.ids.tolist() == [item_id("train", i) for i in range(CATALOG)]  # each once
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["encoder.onnx", "manifest.json", *(f"part-{i:05d}.parquet" for i in range(50))]
    )
    np.testing.assert_allclose(items.vectors, read(embedded_here).vectors, atol=1e-5)


def test_the_cli_end_to_end(cluster: Any, model: Path, embedded_here: Path, tmp_path: Path) -> None:
    def run(*args: Any) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "simsearch.cli", *(str(a) for a in args)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    emb, index_dir = tmp_path / "emb", tmp_path / "index"
    embedded = run("embed", "--catalog", "fashion-mnist", "--limit", CATALOG, "--data-dir",
                   real_data_or_skip(), "--model-from", model, "--out", emb, "--ray",
                   cluster.address, "--batch-size", 5000)  # fmt: skip
    assert embedded.stdout.startswith(f"embedded {CATALOG:,} items into {emb} (4 part(s), ")
    built = run("build-index", "--from-embeddings", emb, "--shards", 4, "--ray", cluster.address,
                "--index-dir", index_dir)  # fmt: skip
    assert "flat index in 4 shard(s)" in built.stdout
    query = tmp_path / "query.png"
    Image.fromarray(load_split("test", real_data_or_skip()).images[0]).save(query)
    sharded = run("query", query, "--json", "-k", 20, "--index-dir", index_dir)
    one = tmp_path / "one"
    build_from_embeddings(embedded_here, one)  # unsharded, in this process, same vectors
    unsharded = run("query", query, "--json", "-k", 20, "--index-dir", one)
    assert json.loads(sharded.stdout) == json.loads(unsharded.stdout)
    info = run("info", "--index-dir", index_dir)
    assert "shards       4 (5,000, 5,000, 5,000, 5,000 items)" in info.stdout
