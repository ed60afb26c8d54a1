"""Training: fit an autoencoder (or PCA) on catalog pixels and export its encoder.

The product of training is a :class:`TrainedModel`: an exported encoder file that the query path
can run without TensorFlow (``encoder.onnx``, or ``encoder.npz`` for PCA), the full Keras
autoencoder (``autoencoder.keras``, for reconstructions), and the loss history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import ConfigError, MissingDependencyError
from simsearch.models import Autoencoder
from simsearch.progress import Reporter
from simsearch.recipes import TrainConfig

# What builds the network a run trains, from its effective configuration (every default filled
# in): default_builder, or a research variant's (scripts/research/variants.py).
Builder = Callable[[TrainConfig], Autoencoder]


@dataclass
class TrainedModel:
    """Files written into ``workdir`` and what training measured."""

    config: TrainConfig  # the effective configuration: what was trained
    encoder_file: Path  # encoder.onnx or encoder.npz
    extra_files: list[Path]  # autoencoder.keras, encoder.keras, history.json
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.config),
            "encoder_file": self.encoder_file.name,
            "epochs_run": self.epochs_run,
            "train_seconds": round(self.seconds, 2),
            "final_loss": self.history.get("loss", [None])[-1],
            "final_val_loss": self.history.get("val_loss", [None])[-1],
        }


def train(
    images: np.ndarray,
    config: TrainConfig,
    workdir: Path,
    reporter: Reporter | None = None,
    tensorboard_dir: Path | None = None,
    labels: np.ndarray | None = None,
    builder: Builder | None = None,
) -> TrainedModel:
    """Train on ``images`` (n, 28, 28) uint8 and write the encoder into ``workdir``.

    ``labels`` (n,) int class ids, -1 = unknown, are used only with ``config.use_labels``: items
    without a label still train the reconstruction but are left out of the classification term.
    ``builder`` builds the network instead of ``models.build_model`` (the same training,
    corruption-based validation, whitening and export follow). Raises ConfigError.
    """
    config.validate()
    config = config.effective()
    reporter = reporter or Reporter(quiet=True)
    if len(images) < 20:
        raise ConfigError(f"need at least 20 training images, got {len(images)}")
    if config.use_labels:
        labels = check_labels(labels, len(images))
    if config.model == "pca":
        return _train_pca(images, config, workdir)
    return _train_keras(images, config, workdir, reporter, tensorboard_dir, labels, builder)


def check_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
    """The labels as int32 (n,), or ConfigError when --use-labels cannot use them."""
    if labels is None or not (np.asarray(labels) >= 0).any():
        raise ConfigError(
            "--use-labels needs labelled training images; this catalog has no labels "
            "(for a folder catalog add --labels-from-folders)"
        )
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if len(labels) != n:
        raise ConfigError(f"--use-labels: {len(labels)} labels for {n} training images")
    classes = np.unique(labels[labels >= 0])
    if len(classes) < 2:
        raise ConfigError(
            f"--use-labels needs at least 2 classes among the training images, found "
            f"{len(classes)} (for a folder catalog add --labels-from-folders)"
        )
    return labels


def _train_pca(images: np.ndarray, config: TrainConfig, workdir: Path) -> TrainedModel:
    from simsearch.encoders import fit_pca

    start = time.perf_counter()
    mean, components = fit_pca(images, config.code_size, seed=config.seed)
    path = workdir / "encoder.npz"
    np.savez(path, mean=mean, components=components)
    return TrainedModel(config, path, [], {}, 1, time.perf_counter() - start)


def _train_keras(
    images: np.ndarray,
    config: TrainConfig,
    workdir: Path,
    reporter: Reporter,
    tensorboard_dir: Path | None,
    labels: np.ndarray | None,
    builder: Builder | None,
) -> TrainedModel:
    from simsearch.models import import_keras, mirror_averaged

    reporter.message("loading TensorFlow ...")
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    x = images.astype(np.float32)
    n_val = max(1, round(len(x) * config.validation_fraction))
    x_train, x_val = x[:-n_val], x[-n_val:]  # the last slice of the split is held out

    model = (builder or default_builder)(config)
    loss = "binary_crossentropy" if config.loss == "bce" else "mse"
    steps = config.epochs * -(-len(x_train) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    fit_model = model.autoencoder  # (the VAE's own compute_loss adds its KL term)
    y_train: Any = x_train / 255.0
    y_val: Any = x_val / 255.0
    if model.corrupt is not None:
        # Validate the task trained: denoising held-out images, corrupted once (seeded). Clean
        # validation inputs would meet BatchNorm statistics gathered on corrupted ones, and
        # that mismatch made the validation loss too erratic for early stopping.
        parts = [x_val[i : i + 2048] for i in range(0, len(x_val), 2048)]
        x_val = np.concatenate([np.asarray(model.corrupt(p, training=True)) for p in parts])
    if n_classes:
        fit_model, losses, weights = _training_graph(model, config, n_classes, loss)
        targets: dict[str, Any] = {"reconstruction": x / 255.0, "logits": labels}
        y_train = {name: targets[name][:-n_val] for name in losses}
        y_val = {name: targets[name][-n_val:] for name in losses}
        metrics = {"reconstruction": ["mse"], "logits": ["sparse_categorical_accuracy"]}
        fit_model.compile(optimizer=optimizer, loss=losses, loss_weights=weights, metrics=metrics)
    else:
        fit_model.compile(optimizer=optimizer, loss=loss, metrics=["mse"])
    # With labels the validation loss is a poor guide (the margin cross-entropy grows with
    # confidence while the accuracy still improves): stop on the head's validation accuracy.
    monitor = "val_logits_sparse_categorical_accuracy" if labels is not None else "val_loss"
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode="max" if labels is not None else "min",
            patience=config.patience,
            restore_best_weights=True,
        ),
        progress_callback(reporter, config.epochs, len(x_train), config.batch_size),
    ]
    if tensorboard_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir)))

    start = time.perf_counter()
    fitted = fit_model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    history = {key: [float(v) for v in values] for key, values in fitted.history.items()}

    encoder = model.encoder
    if model.corrupt is not None or config.whiten or config.mirror:
        codes = encoder.predict(x, batch_size=1024, verbose=0)  # once, for the steps below
    if model.corrupt is not None:
        reporter.message("fitting the decoder to the codes of clean images ...")
        refit_decoder(model, codes[:-n_val], x_train, loss, config.batch_size)
    if config.mirror:
        codes = (codes + encoder.predict(x[:, :, ::-1], batch_size=1024, verbose=0)) / 2
        encoder = mirror_averaged(encoder)
    if config.whiten:
        reporter.message(f"fitting the whitening (power {config.whiten}) on {len(x):,} codes ...")
        encoder = fold_whitening(encoder, codes, config.whiten)
    encoder_path = workdir / "encoder.onnx"
    export_onnx(encoder, encoder_path)
    keras_encoder_path = workdir / "encoder.keras"  # the exported encoder, for parity checks
    encoder.save(keras_encoder_path)
    autoencoder_path = workdir / "autoencoder.keras"
    model.autoencoder.save(autoencoder_path)
    history_path = workdir / "history.json"
    history_path.write_text(json.dumps(history, indent=1))
    extra = [autoencoder_path, keras_encoder_path, history_path]
    return TrainedModel(config, encoder_path, extra, history, len(history["loss"]), seconds)


def default_builder(config: TrainConfig) -> Autoencoder:
    """The network of ``config.model`` (``models.build_model``)."""
    from simsearch.models import build_model

    return build_model(config.model, config.code_size, config.tail_convs, config.noise)


def refit_decoder(
    model: Any, codes: np.ndarray, images: np.ndarray, loss: str, batch_size: int
) -> None:
    """Two epochs of the decoder alone: ``codes`` (the frozen encoder's, of the clean
    ``images``) -> ``images``.

    Corrupted training inputs leave BatchNorm statistics that clean images do not match: the
    codes of clean images are then decoded too bright (test MSE 0.055 per pixel, against 0.014
    after this refit). Those statistics retrieve better than clean ones (0.4 P@10, README),
    so the encoder keeps them and the decoder learns the codes the index actually holds.
    """
    import keras

    model.decoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    model.decoder.fit(codes, images / 255.0, epochs=2, batch_size=batch_size, verbose=0)


def _training_graph(
    model: Autoencoder, config: TrainConfig, n_classes: int, reconstruction_loss: str
) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """The model ``fit`` trains with labels: pixels -> {"reconstruction", "logits"}, with the
    loss and weight of each output.

    The label head sees the code the decoder reconstructs from (of the corrupted input when the
    model corrupts its input).
    """
    import keras

    from simsearch.models import cosine_head

    pixels = keras.Input((28, 28), dtype="float32", name="pixels")
    if model.corrupt is not None:
        code = model.encoder(model.corrupt(pixels))
        reconstruction = model.decoder(code)
    else:
        code = model.encoder(pixels)
        reconstruction = model.autoencoder(pixels)  # keeps the kind's own noise / L1 layers
    head = cosine_head(n_classes, config.label_scale)
    outputs = {
        "reconstruction": keras.layers.Identity(name="reconstruction")(reconstruction),
        "logits": keras.layers.Identity(name="logits")(head(code)),
    }
    losses = {"reconstruction": reconstruction_loss, "logits": _margin_loss(config, n_classes)}
    weights = {"reconstruction": 1.0, "logits": config.label_weight}
    return keras.Model(pixels, outputs, name="training_graph"), losses, weights


def _margin_loss(config: TrainConfig, n_classes: int) -> Any:
    """Cross-entropy of CosFace logits ``s * (cos - m [true class])``; items labelled -1
    contribute 0."""
    from keras import ops

    shift = config.label_scale * config.label_margin

    def margin_cross_entropy(y_true: Any, y_pred: Any) -> Any:
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        known = ops.cast(y >= 0, y_pred.dtype)
        onehot = ops.one_hot(ops.maximum(y, 0), n_classes, dtype=y_pred.dtype)
        log_p = ops.log_softmax(y_pred - shift * onehot, axis=-1)
        return -ops.sum(onehot * log_p, axis=-1) * known

    return margin_cross_entropy


def whitening_map(codes: np.ndarray, power: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, weights) with whitened = (codes - mean) @ weights: PCA-whitening to ``power``."""
    x = np.asarray(codes, dtype=np.float64)
    mean = x.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(np.cov((x - mean).T))
    floor = 1e-6 * max(float(eigenvalues.max()), 1e-12)
    return mean, vectors / np.power(np.maximum(eigenvalues, 0.0) + floor, power)


def fold_whitening(encoder: Any, codes: np.ndarray, power: float) -> Any:
    """The encoder followed by a fixed linear map: PCA-whitening of ``codes`` (its own codes of
    the training images).

    codes -> (codes - mean) @ U diag(eigenvalues ** -power); power 0.5 is full whitening, 0.25
    "half" whitening (it evens out the code's directions without blowing up the noisy ones).
    """
    import keras

    mean, weights = whitening_map(codes, power)
    layer = keras.layers.Dense(codes.shape[1], name="whiten")
    outputs = layer(encoder.output)
    layer.set_weights([weights.astype(np.float32), (-mean @ weights).astype(np.float32)])
    return keras.Model(encoder.input, outputs, name="encoder_whitened")


def export_onnx(encoder: Any, path: Path) -> None:
    """Export a Keras encoder to ONNX (float32 (n, 28, 28) -> (n, d)); needs tf2onnx."""
    import warnings

    encoder(np.zeros((1, 28, 28), np.float32))  # Keras' exporter needs a built, called model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation chatter
        try:
            encoder.export(str(path), format="onnx", verbose=False)
        except ImportError as exc:  # Keras imports tf2onnx/onnx only here
            raise MissingDependencyError(
                f"exporting the encoder to ONNX needs tf2onnx and onnx ({exc}): "
                "pip install 'simsearch[train]'"
            ) from None


def progress_callback(reporter: Reporter, epochs: int, n: int, batch_size: int) -> Any:
    import keras

    class ProgressCallback(keras.callbacks.Callback):
        """One rich bar over all batches of all epochs, with the loss figures as status."""

        def __init__(self) -> None:
            super().__init__()
            self.steps = -(-n // batch_size)
            self.context: Any = None
            self.advance: Any = None
            self.epoch = 0

        def on_train_begin(self, logs: Any = None) -> None:
            self.context = reporter.task("training", total=epochs * self.steps, unit="batches")
            self.advance = self.context.__enter__()

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            loss = (logs or {}).get("loss")
            status = f"epoch {self.epoch}/{epochs}" + (f" loss {loss:.4f}" if loss else "")
            self.advance(1, status=status)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            reporter.message(
                f"epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}"
                f"  val_loss {logs.get('val_loss', float('nan')):.4f}"
            )

        def on_train_end(self, logs: Any = None) -> None:
            if self.context is not None:
                self.context.__exit__(None, None, None)

    return ProgressCallback()
