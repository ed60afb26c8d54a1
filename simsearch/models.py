"""Autoencoder architectures (Keras 3).

Every builder returns an :class:`Autoencoder`: the full model that training fits, and the
encoder as its own model. Encoders take (n, 28, 28) float32 pixels in [0, 255] and scale them
themselves (a ``Rescaling`` layer), so no caller can forget it; they return (n, code_size)
float32 codes. Training-only layers (noise, shifts) sit in front of the encoder, never in it,
so the exported encoder is deterministic.

TensorFlow/Keras are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simsearch.errors import ConfigError

MODEL_KINDS: dict[str, str] = {
    "pca": "PCA of the pixels (the optimal linear autoencoder); no TensorFlow, trains in seconds",
    "dense": "dense autoencoder 784-512-128-D-128-512-784",
    "deep": "deep dense autoencoder 784-1024-512-256-128-D and mirror",
    "conv": "convolutional autoencoder: strided Conv2D + BN encoder, Conv2DTranspose decoder",
    "denoising": "dense autoencoder trained to remove Gaussian noise and 1-2 px shifts",
    "sparse": "dense autoencoder with an L1 activity penalty on the code",
}
DEFAULT_MODEL = "dense"


@dataclass
class Autoencoder:
    """A trainable autoencoder (input pixels [0, 255] -> reconstruction [0, 1]) and its encoder."""

    autoencoder: Any  # keras.Model
    encoder: Any  # keras.Model
    decoder: Any  # keras.Model


def build_model(kind: str, code_size: int) -> Autoencoder:
    """Build an untrained autoencoder of the given kind (see MODEL_KINDS) and code size."""
    if code_size < 2 or code_size > 1024:
        raise ConfigError(f"--code-size must be between 2 and 1024, got {code_size}")
    builders = {
        "dense": lambda: _dense(code_size, (512, 128)),
        "deep": lambda: _dense(code_size, (1024, 512, 256, 128)),
        "conv": lambda: _conv(code_size),
        "denoising": lambda: _dense(code_size, (512, 128), noise=0.2, shift=2 / 28),
        "sparse": lambda: _dense(code_size, (512, 128), l1=1e-4),
    }
    if kind not in builders:
        raise ConfigError(f"unknown --model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return builders[kind]()


def _assemble(encoder: Any, decoder: Any, noise: float = 0.0, shift: float = 0.0) -> Autoencoder:
    """Chain [training-only corruption] -> encoder -> decoder into one trainable model."""
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = inputs
    if shift:
        # Shifted input, clean target: the code learns to ignore small misalignments.
        x = keras.layers.Reshape((28, 28, 1))(x)
        x = keras.layers.RandomTranslation(shift, shift, fill_mode="constant")(x)
        x = keras.layers.Reshape((28, 28))(x)
    if noise:
        x = keras.layers.GaussianNoise(noise * 255.0)(x)
    outputs = decoder(encoder(x))
    return Autoencoder(keras.Model(inputs, outputs, name="autoencoder"), encoder, decoder)


def _dense(
    code_size: int, hidden: tuple[int, ...], noise: float = 0.0, shift: float = 0.0, l1: float = 0.0
) -> Autoencoder:
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    for width in hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
    regularizer = keras.regularizers.L1(l1) if l1 else None
    code = keras.layers.Dense(code_size, activity_regularizer=regularizer, name="code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    code_in = keras.Input((code_size,), name="code")
    y = code_in
    for width in reversed(hidden):
        y = keras.layers.Dense(width, activation="relu")(y)
    y = keras.layers.Dense(28 * 28, activation="sigmoid")(y)
    decoder = keras.Model(code_in, keras.layers.Reshape((28, 28))(y), name="decoder")
    return _assemble(encoder, decoder, noise=noise, shift=shift)


def _conv(code_size: int) -> Autoencoder:
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    for filters in (32, 64):  # 28 -> 14 -> 7
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    code = keras.layers.Dense(code_size, name="code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    code_in = keras.Input((code_size,), name="code")
    y = keras.layers.Dense(7 * 7 * 64, activation="relu")(code_in)
    y = keras.layers.Reshape((7, 7, 64))(y)
    y = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(y)
    y = keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")(y)
    decoder = keras.Model(code_in, keras.layers.Reshape((28, 28))(y), name="decoder")
    return _assemble(encoder, decoder)
