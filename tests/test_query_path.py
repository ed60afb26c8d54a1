"""The query path is light: no TensorFlow, and the exported encoder matches Keras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import real_data_or_skip


def _run_python(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_library_query_never_imports_tensorflow(onnx_index_dir: Path, item_png: Path) -> None:
    """An ONNX-encoder index, as training exports: the query runs ONNX Runtime only."""
    assert_query_is_light(onnx_index_dir, item_png)


@pytest.mark.slow
def test_trained_index_query_never_imports_tensorflow(
    conv_denoising_index_dir: Path, item_png: Path
) -> None:
    assert_query_is_light(conv_denoising_index_dir, item_png)


def assert_query_is_light(index_dir: Path, image: Path) -> None:
    result = _run_python(
        "import json, sys\n"
        "from simsearch import SearchIndex\n"
        f"index = SearchIndex.load({str(index_dir)!r})\n"
        f"hits = index.query({str(image)!r}, k=5)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'matplotlib', 'sklearn', 'fastapi'))\n"
        "print(json.dumps({'heavy': heavy, 'n': len(hits), 'encoder': index.encoder_file.name}))\n"
    )
    assert result == {"heavy": [], "n": 5, "encoder": "encoder.onnx"}


def test_onnx_index_finds_what_the_pca_index_finds(
    onnx_index_dir: Path, pca_index_dir: Path, item_png: Path
) -> None:
    """The ONNX fixture is the PCA model in another file format: same neighbours."""
    from simsearch import SearchIndex

    onnx_hits = SearchIndex.load(onnx_index_dir).query(item_png, k=5)
    pca_hits = SearchIndex.load(pca_index_dir).query(item_png, k=5)
    assert [h.id for h in onnx_hits] == [h.id for h in pca_hits]
    assert onnx_hits[0].id == "fashion-mnist/train/00007"
    assert [h.similarity for h in onnx_hits] == pytest.approx(
        [h.similarity for h in pca_hits], abs=1e-5
    )


def test_cli_help_and_import_are_light() -> None:
    result = _run_python(
        "import json, sys\n"
        "import simsearch, simsearch.cli\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'faiss', 'onnxruntime', 'numpy', 'PIL', 'matplotlib'))\n"
        "print(json.dumps({'heavy': heavy}))\n"
    )
    assert result == {"heavy": []}


@pytest.mark.slow
def test_onnx_encoder_matches_keras(conv_denoising_index_dir: Path) -> None:
    """Parity on 1,000 real images: max |diff| of normalised embeddings < 1e-4, same top-10."""
    import keras

    from simsearch import SearchIndex
    from simsearch.data import load_split
    from simsearch.encoders import normalize

    index = SearchIndex.load(conv_denoising_index_dir)
    images = load_split("test", real_data_or_skip()).images[:1000]
    # encoder.keras is the exported encoder (with its folded whitening), saved next to the ONNX.
    encoder = keras.models.load_model(index.model_file("encoder.keras"))
    keras_vectors = normalize(np.asarray(encoder(images.astype("float32"))))
    onnx_vectors = index.embed_pixels(images)
    assert np.abs(keras_vectors - onnx_vectors).max() < 1e-4
    _, keras_rows = index.search(keras_vectors, 10)
    _, onnx_rows = index.search(onnx_vectors, 10)
    # Identical top-10 sets (order may only differ between exact ties).
    same = [set(a) == set(b) for a, b in zip(keras_rows.tolist(), onnx_rows.tolist(), strict=True)]
    assert all(same)
