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
from simsearch.parallel import check_threads, chunks, map_in_order


class Encoder(Protocol):
    dim: int
    data: bytes  # the encoder file's content
    # True: each encode() call runs on one thread, so a batch goes in chunks to worker threads;
    # False: encode() threads a whole batch itself (numpy's BLAS), give it the batch at once.
    in_chunks: bool

    def encode(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(n, 28, 28) uint8 -> (n, dim) float32 raw codes (not normalised), on up to
        ``threads`` threads (None: every core)."""
        ...


class OnnxEncoder:
    """An exported Keras encoder run with ONNX Runtime.

    One single-threaded session: a query's few images are encoded in the calling thread
    (handing work to other threads would cost more than the work), a large batch in chunks on
    several threads at once (``simsearch.parallel``), which share the session. ``threads``:
    how many when a call does not say (None: every core; 1: a worker that owns one core).
    """

    in_chunks = True

    def __init__(self, path: Path, data: bytes | None = None, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads
        # The model is held in memory, so nothing reopens a file that a newer version of the
        # index may have removed meanwhile.
        self.data = path.read_bytes() if data is None else data
        self.session = self._session()
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_outputs()[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise IndexCorruptError(f"{path}: encoder output shape {shape} is not (n, d)")
        self.dim = int(shape[1])

    def _session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise IndexCorruptError(f"{self.path}: not a loadable ONNX model ({exc})") from None

    def encode(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        images = np.asarray(images).reshape(-1, 28, 28)
        threads = check_threads(self.threads if threads is None else threads)
        parts = chunks(len(images), threads)
        out = np.empty((len(images), self.dim), np.float32)
        codes = map_in_order(self._run, [images[part] for part in parts], threads)
        for part, part_codes in zip(parts, codes, strict=True):
            out[part] = part_codes
        return out

    def _run(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)


class LinearEncoder:
    """PCA projection: codes = (pixels / 255 - mean) @ components."""

    in_chunks = False  # BLAS threads called from several threads at once spin against each other

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

    def encode(self, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        # One matrix product: numpy's BLAS threads it.
        x = np.asarray(images, dtype=np.float32).reshape(-1, 784) / 255.0
        return (x - self.mean) @ self.components


def load_encoder(path: Path, data: bytes | None = None, threads: int | None = None) -> Encoder:
    """The encoder stored at ``path`` (by suffix: .onnx or .npz); ``data``: its bytes, when the
    caller has read them already; ``threads``: for batches (None: every core)."""
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
    x = np.array(codes, dtype=np.float32, copy=True)
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (0, d) stays (0, d)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 1e-12)
    x[(norms <= 1e-12).ravel()] = 0.0
    return x
