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


def test_library_query_never_imports_tensorflow(dense_index_dir: Path, item_png: Path) -> None:
    result = _run_python(
        "import json, sys\n"
        "from simsearch import SearchIndex\n"
        f"index = SearchIndex.load({str(dense_index_dir)!r})\n"
        f"hits = index.query({str(item_png)!r}, k=5)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'matplotlib', 'sklearn', 'fastapi'))\n"
        "print(json.dumps({'heavy': heavy, 'n': len(hits)}))\n"
    )
    assert result == {"heavy": [], "n": 5}


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
def test_onnx_encoder_matches_keras(dense_index_dir: Path) -> None:
    """Parity on 1,000 real images: max |diff| of normalised embeddings < 1e-4, same top-10."""
    import keras

    from simsearch import SearchIndex
    from simsearch.data import load_split
    from simsearch.encoders import normalize

    index = SearchIndex.load(dense_index_dir)
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
