"""Autoencoder architectures (Keras 3).

Every builder returns an :class:`Autoencoder`: the full model that training fits, and the
encoder as its own model. Encoders take (n, 28, 28) float32 pixels in [0, 255] and scale them
themselves (a ``Rescaling`` layer), so no caller can forget it; they return (n, code_size)
float32 codes. Training-only layers (noise, shifts) sit in front of the encoder, never in it,
so the exported encoder is deterministic.

TensorFlow/Keras are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsearch.errors import ConfigError

MODEL_KINDS: dict[str, str] = {
    "pca": "PCA of the pixels (the optimal linear autoencoder); no TensorFlow, trains in seconds",
    "dense": "dense autoencoder 784-512-128-D-128-512-784",
    "deep": "deep dense autoencoder 784-1024-512-256-128-D and mirror",
    "conv": "convolutional autoencoder: strided Conv2D + BN encoder, Conv2DTranspose decoder",
    "denoising": "dense autoencoder trained to remove Gaussian noise and 1-2 px shifts",
    "sparse": "dense autoencoder with an L1 activity penalty on the code",
    "conv-denoising": "convolutional denoising autoencoder (the default): Conv2D+BN encoder "
    "trained to reconstruct the clean image from shifted (+-2 px), flipped, zoomed (+-10%), noisy "
    "and brightness-jittered (x0.6-1.4) inputs; code = mean of the image's and its mirror "
    "image's, half-whitened",
    "vae": "variational autoencoder 784-512-128-(mean, log-variance D)-128-512-784; loss = "
    "reconstruction + KL(q(z|x) || N(0, I)) / 784; the embedding is the mean of q(z|x)",
}
DEFAULT_MODEL = "conv-denoising"
# Eigenvalue power of the PCA-whitening folded into the exported encoder, per kind (0 = none).
# 0.25 ("half-whitening") was chosen on the validation slice for conv-denoising: +1.1 P@10.
DEFAULT_WHITEN: dict[str, float] = {"conv-denoising": 0.25}
# Kinds whose exported encoder averages the codes of an image and its mirror image
# (mirror_averaged): those trained on randomly flipped inputs, whose codes nearly agree anyway.
MIRROR_AVERAGED: frozenset[str] = frozenset({"conv-denoising"})
# Std (on [0, 1] pixels) of the Gaussian noise in conv-denoising's training corruption, without
# and with --use-labels. Without labels it makes no measurable difference to P@10 (0.852 with,
# 0.853 without); with labels it capped P@10 below 0.90 (0.909 without it; README).
DENOISING_NOISE = 0.1
LABELS_NOISE = 0.0


@dataclass
class Autoencoder:
    """A trainable autoencoder (input pixels [0, 255] -> reconstruction [0, 1]) and its encoder."""

    autoencoder: Any  # keras.Model
    encoder: Any  # keras.Model
    decoder: Any  # keras.Model
    corrupt: Any = None  # keras.Model pixels -> corrupted pixels (training only), or None


def build_model(
    kind: str, code_size: int, tail_convs: int = 0, noise: float | None = None
) -> Autoencoder:
    """Build an untrained autoencoder of the given kind (see MODEL_KINDS) and code size;
    ``tail_convs`` and ``noise`` (None = DENOISING_NOISE): conv-denoising's (_conv_denoising;
    TrainConfig.validate refuses them for other kinds)."""
    noise = DENOISING_NOISE if noise is None else noise
    if code_size < 2 or code_size > 1024:
        raise ConfigError(f"--code-size must be between 2 and 1024, got {code_size}")
    builders = {
        "dense": lambda: _dense(code_size, (512, 128)),
        "deep": lambda: _dense(code_size, (1024, 512, 256, 128)),
        "conv": lambda: _conv(code_size),
        "denoising": lambda: _dense(code_size, (512, 128), noise=0.2, shift=2 / 28),
        "sparse": lambda: _dense(code_size, (512, 128), l1=1e-4),
        "vae": lambda: _vae(code_size, (512, 128)),
        "conv-denoising": lambda: _conv_denoising(code_size, tail_convs=tail_convs, noise=noise),
    }
    if kind not in builders:
        raise ConfigError(f"unknown --model {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return builders[kind]()


def _assemble(
    encoder: Any, decoder: Any, noise: float = 0.0, shift: float = 0.0, l1: float = 0.0
) -> Autoencoder:
    """Chain [training-only corruption] -> encoder -> [code penalty] -> decoder into one model.

    The L1 penalty is a layer between encoder and decoder, not an activity regulariser inside
    the encoder: the exported encoder must not carry a training loss (tf2onnx cannot export it).
    """
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = inputs
    if shift:
        # Shifted input, clean target: the code learns to ignore small misalignments.
        x = keras.layers.Reshape((28, 28, 1))(x)
        x = keras.layers.RandomTranslation(shift, shift, fill_mode="constant")(x)
        x = keras.layers.Reshape((28, 28))(x)
    if noise:
        # Keras 3 wants stddev in [0, 1]: add the noise on the [0, 1] scale, then scale back.
        x = keras.layers.Rescaling(1.0 / 255.0)(x)
        x = keras.layers.GaussianNoise(noise)(x)
        x = keras.layers.Rescaling(255.0)(x)
    code = encoder(x)
    if l1:
        code = keras.layers.ActivityRegularization(l1=l1)(code)
    outputs = decoder(code)
    return Autoencoder(keras.Model(inputs, outputs, name="autoencoder"), encoder, decoder)


def _mlp_decoder(code_size: int, hidden: tuple[int, ...]) -> Any:
    """code -> ReLU Dense layers of widths ``hidden`` -> 28x28 sigmoid pixels in [0, 1]."""
    import keras

    code_in = keras.Input((code_size,), name="code")
    y = code_in
    for width in hidden:
        y = keras.layers.Dense(width, activation="relu")(y)
    y = keras.layers.Dense(28 * 28, activation="sigmoid")(y)
    return keras.Model(code_in, keras.layers.Reshape((28, 28))(y), name="decoder")


def _dense(
    code_size: int, hidden: tuple[int, ...], noise: float = 0.0, shift: float = 0.0, l1: float = 0.0
) -> Autoencoder:
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    for width in hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
    code = keras.layers.Dense(code_size, name="code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    decoder = _mlp_decoder(code_size, tuple(reversed(hidden)))
    return _assemble(encoder, decoder, noise=noise, shift=shift, l1=l1)


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


def _conv_denoising(
    code_size: int,
    width: int = 32,
    hidden: int = 256,
    shift: int = 2,
    extra_corruption: Any = None,
    double: bool = False,
    gain: tuple[float, float] | None = (0.6, 1.4),
    zoom: float = 0.1,
    tail_convs: int = 0,
    noise: float = DENOISING_NOISE,
) -> Autoencoder:
    """Conv2D+BN encoder, MLP decoder; inputs shifted (up to ``shift`` px), flipped, zoomed
    (+-``zoom``), noised (``noise``, std on [0, 1]) and brightness-jittered (a random ``gain``)
    in training only.
    ``extra_corruption``: a Keras layer applied after those (research variants, e.g. random
    erasing), on pixels in [0, 1]. ``double``: a stride-1 3x3 conv before each strided one
    (research); ``tail_convs``: that many stride-1 3x3 convs after them, at 7x7."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Reshape((28, 28, 1))(x)
    strides = (1, 2) if double else (2,)
    convs = [(filters, stride) for filters in (width, 2 * width) for stride in strides]
    convs += [(2 * width, 1)] * tail_convs  # 28 -> 14 -> 7 [-> 7 ...]
    for filters, stride in convs:
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(hidden, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    code = layers.Dense(code_size, name="code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    decoder = _mlp_decoder(code_size, (512,))

    # Training graph: corrupted input -> encoder -> decoder, compared with the clean image, so
    # the code learns to ignore the small misalignments a photographed query brings. The gain
    # added 0.6 P@10 on the protocol in two research runs and a default build; the zoom
    # 0.3-0.4 over 20 epochs (0.1 over 10; README).
    corrupt = corruption(shift, noise, gain=gain, zoom=zoom, extra=extra_corruption)
    clean = keras.Input((28, 28), dtype="float32", name="pixels")
    autoencoder = keras.Model(clean, decoder(encoder(corrupt(clean))), name="autoencoder")
    return Autoencoder(autoencoder, encoder, decoder, corrupt)


def corruption(
    shift: int = 2,
    noise: float = 0.1,
    gain: tuple[float, float] | None = None,
    zoom: float = 0.0,
    erase: float = 0.0,
    extra: Any = None,
    name: str = "corrupt",
) -> Any:
    """Training only: pixels [0, 255] -> a randomly corrupted copy, each call new randomness.

    Integer shifts up to ``shift`` px, a horizontal flip, a zoom of +-``zoom``, Gaussian noise
    (``noise`` on the [0, 1] scale, as Keras 3 wants), a brightness ``gain`` range, with
    probability ``erase`` one erased rectangle, then the ``extra`` layer (research variants).
    """
    import keras
    from keras import layers

    pixels = keras.Input((28, 28), dtype="float32", name="pixels")
    z = layers.Reshape((28, 28, 1))(pixels)
    z = layers.RandomTranslation(
        shift / 28, shift / 28, fill_mode="constant", interpolation="nearest"
    )(z)
    z = layers.RandomFlip("horizontal")(z)
    if zoom:
        z = layers.RandomZoom(zoom, zoom, fill_mode="constant")(z)
    z = layers.Reshape((28, 28))(z)
    z = layers.Rescaling(1.0 / 255.0)(z)
    if noise:
        z = layers.GaussianNoise(noise)(z)
    if gain is not None:
        z = random_gain(*gain)(z)
    if erase:
        z = random_erasing(erase)(z)
    if extra is not None:
        z = extra(z)
    z = layers.Rescaling(255.0)(z)
    return keras.Model(pixels, z, name=name)


def view_augmentation() -> Any:
    """One random view of an image for the contrastive term: shifts up to 3 px, flip, zoom
    +-10%, noise and, half the time, an erased rectangle."""
    return corruption(shift=3, zoom=0.1, erase=0.5, name="view")


def random_erasing(p: float = 0.5, low: int = 6, high: int = 14) -> Any:
    """Training only: with probability p, zero one random rectangle (side low..high px) of
    (n, 28, 28) pixels in [0, 1]."""
    import keras
    from keras import ops

    class RandomErasing(keras.layers.Layer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed = keras.random.SeedGenerator(1)

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            n = ops.shape(x)[0]
            u = keras.random.uniform((n, 5), seed=self.seed)
            h = low + u[:, 0] * (high - low)
            w = low + u[:, 1] * (high - low)
            top = u[:, 2] * (28 - h)
            left = u[:, 3] * (28 - w)
            on = ops.cast(u[:, 4] < p, x.dtype)
            grid = ops.cast(ops.arange(28), x.dtype)
            rows = ops.logical_and(
                grid[None, :] >= top[:, None], grid[None, :] < (top + h)[:, None]
            )
            cols = ops.logical_and(
                grid[None, :] >= left[:, None], grid[None, :] < (left + w)[:, None]
            )
            box = ops.cast(rows, x.dtype)[:, :, None] * ops.cast(cols, x.dtype)[:, None, :]
            return x * (1.0 - box * on[:, None, None])

    return RandomErasing(name="random_erasing")


def random_gain(low: float = 0.6, high: float = 1.4) -> Any:
    """Training only: multiply each image's [0, 1] pixels by a random gain in [low, high],
    capped at 1. The target stays clean, so the code learns to ignore overall brightness (a
    dark and a light shirt are both shirts)."""
    return _random_gain_class()(low, high, name="random_gain")


@functools.cache
def _random_gain_class() -> Any:
    """The gain layer's class, defined (and registered, for loading) on first use."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="simsearch")
    class RandomGain(keras.layers.Layer):
        def __init__(self, low: float, high: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.low, self.high = low, high
            self.seed = keras.random.SeedGenerator(2)

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            gain = keras.random.uniform(shape, self.low, self.high, seed=self.seed)
            # Capped above only: the Gaussian noise added before keeps its zero mean.
            return ops.minimum(x * gain, 1.0)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "low": self.low, "high": self.high}

    return RandomGain


def mirror_averaged(encoder: Any) -> Any:
    """pixels -> the mean of the codes of the image and of its mirror image.

    The catalog and the queries both get this code, so a mirrored photo of an item finds the
    item exactly as the photo does (a left- and a right-facing shoe are the same product). The
    two views go through the encoder as one batch of 2n: one pass of the graph, not two, which
    is what a single query pays for; a large batch does twice the work either way.
    """
    import keras

    with_mirrors, mean_of_halves = _mirror_classes()
    pixels = keras.Input((28, 28), dtype="float32", name="pixels")
    codes = encoder(with_mirrors(name="with_mirrors")(pixels))
    return keras.Model(
        pixels, mean_of_halves(name="mean_of_halves")(codes), name="encoder_mirror_averaged"
    )


@functools.cache
def _mirror_classes() -> tuple[Any, Any]:
    """Two layers: (n, 28, 28) images -> (2n, 28, 28) the images then their left-right mirror
    images, and (2n, d) codes -> (n, d) the mean of the two halves. Registered, so saved
    encoders load back."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="simsearch")
    class WithMirrors(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return ops.concatenate([x, ops.flip(x, axis=-1)], axis=0)

    @keras.saving.register_keras_serializable(package="simsearch")
    class MeanOfHalves(keras.layers.Layer):
        def call(self, codes: Any) -> Any:
            n = ops.shape(codes)[0] // 2
            return (codes[:n] + codes[n:]) / 2

    return WithMirrors, MeanOfHalves


def l2_normalize(x: Any, axis: int = -1) -> Any:
    """Keras tensor ``x`` scaled to unit L2 norm along ``axis`` (a zero vector stays zero)."""
    from keras import ops

    return x / ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True) + 1e-12)


def cosine_head(n_classes: int, scale: float) -> Any:
    """Training-only classifier on the code: ``scale * cos(code, w_c)`` per class (NormFace).

    Both the code and the class weights are L2-normalised, so the logits depend on the angle
    only: the geometry the cosine index searches in. Not part of the exported encoder.
    """
    import keras
    from keras import ops

    class CosineHead(keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.w = self.add_weight(
                shape=(int(input_shape[-1]), n_classes), initializer="glorot_uniform", name="w"
            )

        def call(self, code: Any) -> Any:
            return scale * ops.matmul(l2_normalize(code), l2_normalize(self.w, axis=0))

    return CosineHead(name="cosine_head")


def load_autoencoder(path: str | Path) -> Any:
    """Load a saved ``autoencoder.keras`` (or ``encoder.keras``) of any kind: registers
    simsearch's own classes (VAE, gain, mirror) first."""
    import keras

    _vae_class()
    _random_gain_class()
    _mirror_classes()
    return keras.saving.load_model(str(path), compile=False)


def _vae(code_size: int, hidden: tuple[int, ...], beta: float = 1.0) -> Autoencoder:
    """A variational autoencoder (Kingma & Welling 2014) whose exported encoder outputs the mean.

    ``posterior`` maps pixels to (mean, log-variance) of q(z|x); ``encoder`` shares its layers but
    outputs the mean only (deterministic, what the index stores); training samples
    z = mean + exp(log_var / 2) * eps and adds the KL term in ``compute_loss`` (no ``add_loss``).
    """
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    for width in hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
    mean = keras.layers.Dense(code_size, name="code")(x)
    log_var = keras.layers.Dense(code_size, kernel_initializer="zeros", name="log_var")(x)
    posterior = keras.Model(inputs, [mean, log_var], name="posterior")
    encoder = keras.Model(inputs, mean, name="encoder")

    decoder = _mlp_decoder(code_size, tuple(reversed(hidden)))
    vae = _vae_class()(posterior, decoder, beta=beta, name="autoencoder")
    return Autoencoder(vae, encoder, decoder)


@functools.cache
def _vae_class() -> Any:
    """The Keras model class of the VAE, defined (and registered for loading) on first use."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="simsearch")
    class VariationalAutoencoder(keras.Model):
        """pixels (n, 28, 28) [0, 255] -> reconstruction (n, 28, 28) [0, 1].

        Training: z ~ q(z|x) by reparameterisation; loss = the compiled reconstruction loss
        (a per-pixel mean) + beta * KL / 784, i.e. the negative ELBO per pixel for beta = 1.
        Inference: z = mean, so reconstructions are deterministic.
        """

        def __init__(
            self, posterior: Any, decoder: Any, beta: float = 1.0, seed: int = 0, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.posterior = posterior
            self.decoder = decoder
            self.beta = float(beta)
            self.seed = int(seed)
            self.noise = keras.random.SeedGenerator(self.seed)

        def call(self, x: Any, training: bool = False) -> Any:
            mean, log_var = self.posterior(x, training=training)
            z = mean
            if training:
                eps = keras.random.normal(ops.shape(mean), seed=self.noise)
                z = mean + ops.exp(0.5 * log_var) * eps
            return self.decoder(z, training=training)

        def compute_loss(
            self,
            x: Any = None,
            y: Any = None,
            y_pred: Any = None,
            sample_weight: Any = None,
            training: bool = True,
        ) -> Any:
            reconstruction = super().compute_loss(x, y, y_pred, sample_weight, training)
            # Recomputed from x: (mean, log_var) are deterministic, so this equals the pass in call.
            mean, log_var = self.posterior(x, training=training)
            kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=1)
            return reconstruction + self.beta * ops.mean(kl) / (28 * 28)

        def get_config(self) -> dict[str, Any]:
            return {
                "name": self.name,
                "posterior": keras.saving.serialize_keras_object(self.posterior),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "beta": self.beta,
                "seed": self.seed,
            }

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> Any:
            config = dict(config)
            for key in ("posterior", "decoder"):
                config[key] = keras.saving.deserialize_keras_object(config[key])
            return cls(**config)

    return VariationalAutoencoder
