"""Tiny synthetic Fashion-MNIST look-alikes: deterministic, class-dependent shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simsearch.data import SPLIT_FILES, write_idx


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 light shapes on black, labels (n,) uint8 in 0..9 (shape = class)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i, label in enumerate(labels):
        height = 8 + 2 * int(label % 5) + int(rng.integers(0, 3))
        width = 6 + 4 * int(label // 5) + int(rng.integers(0, 3)) + int(label % 3)
        top = (28 - height) // 2 + int(rng.integers(-1, 2))
        left = (28 - width) // 2 + int(rng.integers(-1, 2))
        shape = (yy >= top) & (yy < top + height) & (xx >= left) & (xx < left + width)
        if label % 2:  # odd classes are hollow
            inner = (
                (yy >= top + 2)
                & (yy < top + height - 2)
                & (xx >= left + 2)
                & (xx < left + width - 2)
            )
            shape &= ~inner
        brightness = 150 + int(rng.integers(0, 100))
        noise = rng.integers(0, 30, size=(28, 28))
        images[i] = np.clip(shape * brightness + noise * shape, 0, 255).astype(np.uint8)
    return images, labels


def write_dataset(directory: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """Write the four IDX .gz files of a fake dataset into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = make_images(n, seed)
        image_file, label_file = SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
    return directory


def onnx_projection(dim: int = 32, seed: int = 0, hidden: int = 0) -> bytes:
    """A real ONNX encoder for tests that must not train: (n, 28, 28) float pixels -> x / 255
    - 0.3, flattened, times a fixed random (784, dim) matrix; with ``hidden``, through a ReLU
    layer of that width first (more work per image)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 1, (hidden or 784, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
    ]
    extra = []
    if hidden:
        first = rng.normal(0, 0.05, (784, hidden)).astype(np.float32)
        nodes += [
            helper.make_node("MatMul", ["centred", "first"], ["wide"]),
            helper.make_node("Relu", ["wide"], ["features"]),
        ]
        extra.append(numpy_helper.from_array(first, "first"))
    nodes.append(
        helper.make_node("MatMul", ["features" if hidden else "centred", "weights"], ["code"])
    )
    graph = helper.make_graph(
        nodes,
        "projection",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 28, 28])],
        [helper.make_tensor_value_info("code", TensorProto.FLOAT, ["n", dim])],
        initializer=[
            numpy_helper.from_array(np.asarray([-1, 784], np.int64), "shape"),
            numpy_helper.from_array(np.asarray(1 / 255, np.float32), "scale"),
            numpy_helper.from_array(np.asarray(0.3, np.float32), "mean"),
            numpy_helper.from_array(weights, "weights"),
            *extra,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def save_onnx_index(
    directory: Path, images: np.ndarray, labels: np.ndarray, dim: int = 32, hidden: int = 0
) -> Path:
    """An index of Fashion-MNIST-like train items (ids fashion-mnist/train/NNNNN) whose encoder
    is :func:`onnx_projection`, saved to ``directory`` like any built index."""
    from simsearch.data import CLASS_NAMES, item_id
    from simsearch.encoders import OnnxEncoder, normalize
    from simsearch.search_index import SearchIndex

    encoder = OnnxEncoder(directory / "encoder.onnx", onnx_projection(dim, hidden=hidden))
    manifest = {
        "embedding_dim": dim,
        "metric": "cosine",
        "count": len(images),
        "catalog": {"source": "fashion-mnist", "split": "train", "limit": len(images),
                    "label_names": list(CLASS_NAMES)},
        "index": {"type": "flat", "params": {}},
        "model": {"model": "projection", "code_size": dim, "encoder_file": "encoder.onnx"},
    }  # fmt: skip
    index = SearchIndex(
        encoder=encoder,
        encoder_file=directory / "encoder.onnx",
        vectors=normalize(encoder.encode(images)),
        ids=np.asarray([item_id("train", i) for i in range(len(images))]),
        labels=np.asarray(labels, np.int16),
        sources=np.asarray([""] * len(images)),
        images=images,
        manifest=manifest,
    )
    index.save(directory)
    return directory
