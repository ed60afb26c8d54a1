from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from tests.fakedata import write_dataset

if TYPE_CHECKING:
    from simsearch.search_index import SearchIndex

REPO = Path(__file__).parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the user's real index/data settings or writes into the repository."""
    monkeypatch.delenv("SIMSEARCH_INDEX_DIR", raising=False)
    monkeypatch.delenv("SIMSEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no Keras cache from the user
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_pool() -> Iterator[None]:
    """BLAS and OpenMP on one thread: the tests' matrices are small, and on a busy machine
    threads that wait for each other make them many times slower (an eigh of 784x784 took 0.4 s
    on one thread and 4.6 s on two, with other jobs on both cores)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("fake-fmnist"))


@pytest.fixture(scope="session")
def pca_index_dir(tmp_path_factory: pytest.TempPathFactory, fake_data_dir: Path) -> Path:
    """A real index (PCA encoder, the fast deterministic model) over the fake train split."""
    from simsearch.build import BuildConfig, build_index
    from simsearch.training import TrainConfig

    directory = tmp_path_factory.mktemp("indexes") / "fake"
    config = BuildConfig(data_dir=str(fake_data_dir), train=TrainConfig(model="pca", code_size=16))
    build_index(config, directory)
    return directory


@pytest.fixture(scope="session")
def onnx_index_dir(tmp_path_factory: pytest.TempPathFactory, pca_index_dir: Path) -> Path:
    """The PCA index with its projection written as an ONNX model (``encoder.onnx``): a trained
    model's query path (ONNX Runtime) without training one."""
    from simsearch.encoders import LinearEncoder, load_encoder
    from simsearch.search_index import SearchIndex
    from simsearch.storage import sha256_file

    pca = SearchIndex.load(pca_index_dir)
    assert isinstance(pca.encoder, LinearEncoder)
    work = tmp_path_factory.mktemp("onnx-model")
    encoder_file = write_linear_onnx(pca.encoder.mean, pca.encoder.components, work)
    model = pca.manifest["model"] | {
        "encoder_file": encoder_file.name,
        "encoder_sha256": sha256_file(encoder_file),
    }
    directory = tmp_path_factory.mktemp("indexes") / "onnx"
    SearchIndex(
        encoder=load_encoder(encoder_file),
        encoder_file=encoder_file,
        vectors=pca.vectors,
        ids=pca.ids,
        labels=pca.labels,
        sources=pca.sources,
        images=np.asarray(pca.images),
        manifest=pca.manifest | {"model": model},
    ).save(directory)
    return directory


def write_linear_onnx(mean: np.ndarray, components: np.ndarray, folder: Path) -> Path:
    """``folder/encoder.onnx``: (n, 28, 28) float32 pixels -> (pixels / 255 - mean) @ components,
    what an exported encoder takes and returns."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "shape": np.array([-1, 784], np.int64),
        "scale": np.array(1 / 255, np.float32),
        "mean": mean.astype(np.float32),
        "components": components.astype(np.float32),
    }
    nodes = [
        helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "components"], ["code"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_encoder",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 28, 28])],
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["n", components.shape[1]])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    path = folder / "encoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="session")
def conv_denoising_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model (conv-denoising) trained through the CLI on 2,000 real items, 2 epochs
    (TensorFlow: its users are marked slow)."""
    from typer.testing import CliRunner

    from simsearch.cli import app

    data_dir = real_data_or_skip()
    directory = tmp_path_factory.mktemp("indexes") / "dense"
    args = ["build-index", "--limit", "2000", "--epochs", "2", "--seed", "1"]  # default model
    args += ["--data-dir", str(data_dir), "--index-dir", str(directory), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture
def item_png(tmp_path: Path, pca_index_dir: Path) -> Path:
    """A catalog item exported as a PNG file (fashion-mnist/train/00007)."""
    from simsearch.search_index import SearchIndex

    index = SearchIndex.load(pca_index_dir)
    path = tmp_path / "item7.png"
    Image.fromarray(np.asarray(index.item_pixels("fashion-mnist/train/00007"))).save(path)
    return path


def real_data_or_skip() -> Path:
    """The Debian Fashion-MNIST files; in CI their absence is a failure, not a skip."""
    if (REAL_DATA / "train-images-idx3-ubyte.gz").is_file():
        return REAL_DATA
    if os.environ.get("CI"):
        pytest.fail(f"CI must install dataset-fashion-mnist ({REAL_DATA} is empty)")
    pytest.skip("dataset-fashion-mnist is not installed")


def ray_or_skip() -> Any:
    """The ``ray`` module; in CI (the test extra installs it) its absence is a failure."""
    if os.environ.get("CI"):
        import ray

        return ray
    return pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local Ray cluster, one per test module that asks for it: a head and two worker nodes
    (1 CPU each, small object stores)."""
    ray = ray_or_skip()
    from ray.cluster_utils import Cluster

    # The nodes' workers import simsearch from this checkout, as the tests do.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved]))
    store = 128 * 1024 * 1024
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": store},
            connect=False,
        )
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def with_index_type(
    index: SearchIndex, kind: str, params: dict[str, Any] | None = None, **more: Any
) -> SearchIndex:
    """A copy of the SearchIndex ``index`` (same encoder, vectors and items) whose vectors are
    searched by a FAISS index of another ``kind`` (``params``: its defaults). ``more``: other
    SearchIndex arguments (``searcher=`` for shards)."""
    from simsearch import vector_index
    from simsearch.search_index import SearchIndex

    if params is None:
        params = vector_index.default_params(kind, len(index))
    return SearchIndex(
        encoder=index.encoder,
        encoder_file=index.encoder_file,
        vectors=index.vectors,
        ids=index.ids,
        labels=index.labels,
        sources=index.sources,
        images=np.asarray(index.images),
        manifest={**index.manifest, "index": {"type": kind, "params": params}},
        **more,
    )
