"""Query-time encoders: pixels -> codes, without TensorFlow.

An index directory carries one encoder file: ``encoder.onnx`` (an exported Keras encoder, run by
ONNX Runtime) or ``encoder.npz`` (PCA: a mean and a projection matrix, run by numpy). Both take
(n, 28, 28) uint8 images and return (n, d) float32 codes; :func:`normalize` turns codes into the
unit vectors the cosine index stores.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from simsearch.errors import IndexCorruptError

BATCH = 1024
SMALL_BATCH = 64  # up to this many images, encode on one thread


class Encoder(Protocol):
    dim: int
    data: bytes  # the encoder file's content

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(n, 28, 28) uint8 -> (n, dim) float32 raw codes (not normalised)."""
        ...


class OnnxEncoder:
    """An exported Keras encoder run with ONNX Runtime.

    Two sessions: a single-threaded one for a few images (a query: thread hand-offs would cost
    more than the work) and, created on first use, a multi-threaded one for large batches
    (``threads`` threads; None: one per core; 1: no second session, as in a pool of workers
    that each get one core).
    """

    def __init__(self, path: Path, data: bytes | None = None, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads
        # The model is held in memory: the sessions made later (the large-batch one) do not
        # reopen a file that a newer version of the index may have removed meanwhile.
        self.data = path.read_bytes() if data is None else data
        self.session = self._session(threads=1)
        self._batch_session: Any = None
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_outputs()[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise IndexCorruptError(f"{path}: encoder output shape {shape} is not (n, d)")
        self.dim = int(shape[1])

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        # No busy-waiting: on a shared machine spinning threads steal the cores they wait for.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise IndexCorruptError(f"{self.path}: not a loadable ONNX model ({exc})") from None

    def encode(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, 28, 28)
        session = self.session
        if len(x) > SMALL_BATCH and self.threads != 1:
            if self._batch_session is None:
                self._batch_session = self._session(threads=self.threads or 0)  # 0: per core
            session = self._batch_session
        out = [
            session.run(None, {self.input_name: x[i : i + BATCH]})[0]
            for i in range(0, len(x), BATCH)
        ]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


class LinearEncoder:
    """PCA projection: codes = (pixels / 255 - mean) @ components."""

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        self.path = path
        self.data = path.read_bytes() if data is None else data
        try:
            with np.load(io.BytesIO(self.data), allow_pickle=False) as arrays:
                self.mean = arrays["mean"].astype(np.float32)
                self.components = arrays["components"].astype(np.float32)
        except Exception as exc:
            raise IndexCorruptError(f"{path}: not a readable PCA encoder ({exc})") from None
        if self.mean.shape != (784,) or self.components.shape[0] != 784:
            raise IndexCorruptError(f"{path}: PCA encoder has wrong shapes")
        self.dim = int(self.components.shape[1])

    def encode(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32).reshape(-1, 784) / 255.0
        return (x - self.mean) @ self.components


def load_encoder(path: Path, data: bytes | None = None, threads: int | None = None) -> Encoder:
    """The encoder stored at ``path`` (by suffix: .onnx or .npz); ``data``: its bytes, when the
    caller has read them already; ``threads``: for large batches (None: one per core)."""
    if path.suffix == ".onnx":
        return OnnxEncoder(path, data, threads)
    if path.suffix == ".npz":
        return LinearEncoder(path, data)
    raise IndexCorruptError(f"{path}: unknown encoder format {path.suffix!r}")


def fit_pca(images: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCA of (n, 28, 28) uint8 pixels scaled to [0, 1]: mean (784,), components (784, dim)."""
    x = np.asarray(images, dtype=np.float32).reshape(-1, 784) / 255.0
    mean = x.mean(axis=0)
    centred = x - mean
    # Eigen-decomposition of the 784x784 covariance: exact and fast whatever n is.
    cov = (centred.T.astype(np.float64) @ centred) / max(1, len(x) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1][:dim]
    components = eigenvectors[:, order]
    # Fix each component's sign so results repeat across LAPACK builds.
    signs = np.sign(components[np.abs(components).argmax(axis=0), range(components.shape[1])])
    return mean.astype(np.float32), (components * signs).astype(np.float32)


def normalize(codes: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 unit rows; an all-zero row stays zero (similarity 0 to all)."""
    x = np.array(codes, dtype=np.float32, copy=True).reshape(len(codes), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 1e-12)
    x[(norms <= 1e-12).ravel()] = 0.0
    return x
