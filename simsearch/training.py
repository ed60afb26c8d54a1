"""Training: fit an autoencoder (or PCA) on catalog pixels and export its encoder.

The product of training is a :class:`TrainedModel`: an exported encoder file that the query path
can run without TensorFlow (``encoder.onnx``, or ``encoder.npz`` for PCA), the full Keras
autoencoder (``autoencoder.keras``, for reconstructions), and the loss history.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.errors import ConfigError
from simsearch.models import (
    DEFAULT_MODEL,
    DEFAULT_WHITEN,
    DENOISING_NOISE,
    LABELS_NOISE,
    MIRROR_AVERAGED,
    MODEL_KINDS,
)
from simsearch.progress import Reporter


@dataclass
class TrainConfig:
    """Everything that decides what a training run produces."""

    model: str = DEFAULT_MODEL
    code_size: int = 64
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 2e-3  # AdamW peak rate, cosine-decayed to 0 over the run
    weight_decay: float = 1e-4
    whiten: float | None = None  # PCA-whitening power folded into the encoder; None = per kind
    # Export the mean of the codes of each image and its mirror image (models.mirror_averaged):
    # +0.04 to +0.27 points of P@10 in six comparisons (README), at twice the encoder's work.
    # None = the kind's default (models.MIRROR_AVERAGED).
    mirror: bool | None = None
    # conv-denoising: stride-1 convs at 7x7 after the strided ones. One more raised the P@10 of
    # --use-labels by 0.4 points at 1.9x the training time (README); off by default.
    tail_convs: int = 0
    # conv-denoising: std of the Gaussian noise in the training corruption (on [0, 1] pixels).
    # None = the mode's default (models.DENOISING_NOISE, models.LABELS_NOISE with --use-labels).
    noise: float | None = None
    loss: str = "bce"  # binary cross-entropy on [0, 1] pixels, or "mse"
    validation_fraction: float = 0.1  # held out from the TRAIN split; test is the query set
    patience: int = 3  # early stopping on validation loss
    seed: int = 0
    # --use-labels: a training-only cosine-softmax head on the code (scaled cosine logits with
    # an additive margin, CosFace), loss = reconstruction + label_weight * cross-entropy.
    # scale 30 / margin 0.35 (CosFace's values) beat 16 / 0.1 on the validation slice: same
    # P@10 (0.889), mAP@100 0.840 vs 0.829 (scripts/research_model.py, 15 epochs).
    use_labels: bool = False
    label_weight: float = 1.0
    label_scale: float = 30.0
    label_margin: float = 0.35
    label_smoothing: float = 0.0
    # Contrastive term (InfoNCE, as in SimCLR/CLIP) between the codes of two random views of
    # each image (models.view_augmentation): the reconstruction is decoded from the first
    # view's code; loss += contrast_weight * InfoNCE(cosine / contrast_temperature). 0 = off.
    contrast_weight: float = 0.0
    contrast_temperature: float = 0.2

    def validate(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ConfigError(
                f"unknown --model {self.model!r}; choose one of {', '.join(MODEL_KINDS)}"
            )
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.loss not in ("bce", "mse"):
            raise ConfigError(f"--loss must be bce or mse, got {self.loss!r}")
        if self.whiten is not None and not 0.0 <= self.whiten <= 0.5:
            raise ConfigError(f"--whiten must be between 0 and 0.5, got {self.whiten}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError("validation fraction must be in (0, 0.5)")
        if self.mirror and self.model == "pca":
            raise ConfigError("--mirror needs an autoencoder model, not pca")
        if self.whiten and self.model == "pca":
            raise ConfigError("--whiten needs an autoencoder model, not pca")
        if not 0 <= self.tail_convs <= 4:
            raise ConfigError(f"--tail-convs must be between 0 and 4, got {self.tail_convs}")
        if self.tail_convs and self.model != "conv-denoising":
            raise ConfigError(f"--tail-convs needs --model conv-denoising, got {self.model!r}")
        if self.noise is not None and not 0.0 <= self.noise <= 0.5:
            raise ConfigError(f"--noise must be between 0 and 0.5, got {self.noise}")
        if self.noise is not None and self.model != "conv-denoising":
            raise ConfigError(f"--noise needs --model conv-denoising, got {self.model!r}")
        extra_term = "--use-labels" if self.use_labels else ""
        extra_term = extra_term or ("a contrastive term" if self.contrast_weight else "")
        if extra_term and self.model in ("pca", "vae"):
            raise ConfigError(
                f"{extra_term} needs an autoencoder model other than pca or vae, got {self.model!r}"
            )
        if self.label_weight < 0 or self.label_scale <= 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                "label weight must be >= 0, label scale > 0 and label smoothing in [0, 1)"
            )
        if self.contrast_weight < 0 or self.contrast_temperature <= 0:
            raise ConfigError("contrast weight must be >= 0 and contrast temperature > 0")

    def effective(self) -> TrainConfig:
        """This configuration with every "None = the default" filled in: what is trained."""
        conv = self.model == "conv-denoising"
        whiten = DEFAULT_WHITEN.get(self.model, 0.0)
        noise = (LABELS_NOISE if self.use_labels else DENOISING_NOISE) if conv else None
        return replace(
            self,
            whiten=self.whiten if self.whiten is not None else whiten,
            mirror=self.mirror if self.mirror is not None else self.model in MIRROR_AVERAGED,
            noise=self.noise if self.noise is not None else noise,
        )


@dataclass
class TrainedModel:
    """Files written into ``workdir`` and what training measured."""

    config: TrainConfig
    encoder_file: Path  # encoder.onnx or encoder.npz
    extra_files: list[Path]  # autoencoder.keras, history.json, ...
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
) -> TrainedModel:
    """Train on ``images`` (n, 28, 28) uint8 and write the encoder into ``workdir``.

    ``labels`` (n,) int class ids, -1 = unknown, are used only with ``config.use_labels``: items
    without a label still train the reconstruction but are left out of the classification term.
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
    return _train_keras(images, config, workdir, reporter, tensorboard_dir, labels)


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
    labels: np.ndarray | None = None,
) -> TrainedModel:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    reporter.message("loading TensorFlow ...")
    import keras

    from simsearch.models import build_model, mirror_averaged

    keras.utils.set_random_seed(config.seed)
    x = images.astype(np.float32)
    n_val = max(1, round(len(x) * config.validation_fraction))
    x_train, x_val = x[:-n_val], x[-n_val:]  # the last slice of the split is held out

    model = build_model(config.model, config.code_size, config.tail_convs, config.noise)
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
    if n_classes or config.contrast_weight:
        fit_model, losses, weights = _training_graph(model, config, n_classes, loss)
        # The contrastive output compares the two views with each other: its targets are unused.
        targets: dict[str, Any] = {
            "reconstruction": x / 255.0,
            "logits": labels,
            "contrast": np.zeros(len(x)),
        }
        y_train = {name: targets[name][:-n_val] for name in losses}
        y_val = {name: targets[name][-n_val:] for name in losses}
        metrics = {"reconstruction": ["mse"]}
        if n_classes:
            metrics["logits"] = ["sparse_categorical_accuracy"]
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
    curve = _plot_history(history, workdir / "training_curve.png", config.loss)
    if curve is not None:
        extra.append(curve)
    return TrainedModel(config, encoder_path, extra, history, len(history["loss"]), seconds)


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
    model: Any, config: TrainConfig, n_classes: int, reconstruction_loss: str
) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """The model ``fit`` trains: pixels -> {"reconstruction"[, "logits"][, "contrast"]}, with
    the loss and weight of each output.

    The label head sees the code the decoder reconstructs from (of the corrupted input when the
    model corrupts its input). With a contrastive term that code is of a first random view,
    and "contrast" is [code of view 1, code of view 2] for the InfoNCE loss.
    """
    import keras

    from simsearch.models import cosine_head, view_augmentation

    pixels = keras.Input((28, 28), dtype="float32", name="pixels")
    outputs: dict[str, Any] = {}
    losses: dict[str, Any] = {"reconstruction": reconstruction_loss}
    weights = {"reconstruction": 1.0}
    if config.contrast_weight:
        view = view_augmentation()
        code = model.encoder(view(pixels))
        other = model.encoder(view(pixels))  # a second call draws a second, independent view
        outputs["contrast"] = keras.layers.Concatenate(name="contrast")([code, other])
        losses["contrast"] = info_nce_loss(config.contrast_temperature)
        weights["contrast"] = config.contrast_weight
        reconstruction = model.decoder(code)
    elif model.corrupt is not None:
        code = model.encoder(model.corrupt(pixels))
        reconstruction = model.decoder(code)
    else:
        code = model.encoder(pixels)
        reconstruction = model.autoencoder(pixels)  # keeps the kind's own noise / L1 layers
    outputs["reconstruction"] = keras.layers.Identity(name="reconstruction")(reconstruction)
    if n_classes:
        head = cosine_head(n_classes, config.label_scale)
        outputs["logits"] = keras.layers.Identity(name="logits")(head(code))
        losses["logits"] = _margin_loss(config, n_classes)
        weights["logits"] = config.label_weight
    return keras.Model(pixels, outputs, name="training_graph"), losses, weights


def info_nce_loss(temperature: float) -> Any:
    """Symmetric InfoNCE over a batch of [code of view 1, code of view 2] rows: each view's
    positive is the other view of the same image, its negatives the other images' views."""
    from keras import losses, ops

    from simsearch.models import l2_normalize

    def info_nce(y_true: Any, y_pred: Any) -> Any:
        first, second = (l2_normalize(view) for view in ops.split(y_pred, 2, axis=-1))
        logits = ops.matmul(first, ops.transpose(second)) / temperature
        same = ops.arange(ops.shape(logits)[0])
        forward = losses.sparse_categorical_crossentropy(same, logits, from_logits=True)
        backward = losses.sparse_categorical_crossentropy(
            same, ops.transpose(logits), from_logits=True
        )
        return (forward + backward) / 2

    return info_nce


def _margin_loss(config: TrainConfig, n_classes: int) -> Any:
    """Cross-entropy of CosFace logits ``s * (cos - m [true class])``, optionally label-smoothed;
    items labelled -1 contribute 0."""
    from keras import ops

    shift = config.label_scale * config.label_margin
    smoothing = config.label_smoothing

    def margin_cross_entropy(y_true: Any, y_pred: Any) -> Any:
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        known = ops.cast(y >= 0, y_pred.dtype)
        onehot = ops.one_hot(ops.maximum(y, 0), n_classes, dtype=y_pred.dtype)
        log_p = ops.log_softmax(y_pred - shift * onehot, axis=-1)
        target = onehot * (1.0 - smoothing) + smoothing / n_classes
        return -ops.sum(target * log_p, axis=-1) * known

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
        encoder.export(str(path), format="onnx", verbose=False)


def _plot_history(history: dict[str, list[float]], path: Path, loss: str = "") -> Path | None:
    """Training curve PNG (train and validation loss per epoch); skipped without matplotlib."""
    from simsearch.errors import MissingDependencyError
    from simsearch.figures import training_curve

    names = {"bce": "loss (binary cross-entropy)", "mse": "loss (mean squared error)"}
    try:
        return training_curve(history, path, loss_name=names.get(loss, "loss"))
    except MissingDependencyError:
        return None


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
