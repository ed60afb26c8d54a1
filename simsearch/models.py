"""Autoencoder architectures (Keras 3).

Every builder returns an :class:`Autoencoder`: the full model that training fits, and the
encoder as its own model. Encoders take (n, 28, 28) float32 pixels in [0, 255] and scale them
themselves (a ``Rescaling`` layer), so no caller can forget it; they return (n, code_size)
float32 codes. Training-only layers (noise, shifts) sit in front of the encoder, never in it,
so the exported encoder is deterministic.

:func:`build_model` builds each kind of ``simsearch.recipes.RECIPES``. Other architectures (the
research variants in ``scripts/research/``) are built from the public parts here
(:func:`conv_encoder`, :func:`mlp_decoder`, :func:`corruption`, :func:`denoising_autoencoder`)
and handed to ``simsearch.training.train`` as its ``builder``.

TensorFlow/Keras are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simsearch.errors import MissingDependencyError
from simsearch.recipes import Corruption, recipe

# The encoder's stack of 3x3 Conv2D+BN+ReLU layers, as (filters, stride): 28 -> 14 -> 7 px.
CONV_STACK: tuple[tuple[int, int], ...] = ((32, 2), (64, 2))
HIDDEN = 256  # the Dense layer between the conv stack and the code


@dataclass
class Autoencoder:
    """A trainable autoencoder (input pixels [0, 255] -> reconstruction [0, 1]) and its encoder."""

    autoencoder: Any  # keras.Model: what training fits (without labels)
    encoder: Any  # keras.Model
    decoder: Any  # keras.Model
    corrupt: Any = None  # keras.Model pixels -> corrupted pixels (training only), or None


def build_model(
    kind: str, code_size: int, tail_convs: int = 0, noise: float | None = None
) -> Autoencoder:
    """Build an untrained autoencoder of the given kind (``simsearch.recipes.RECIPES``).

    ``tail_convs`` and ``noise`` (None = the recipe's) are conv-denoising's; TrainConfig.validate
    refuses them for the other kinds. ``simsearch.training.train`` calls this unless it is given
    another builder (a research variant, say). Raises ConfigError for an unknown kind.
    """
    recipe(kind)
    builders = {
        "dense": lambda: _dense(code_size, (512, 128)),
        "deep": lambda: _dense(code_size, (1024, 512, 256, 128)),
        "conv": lambda: _conv(code_size),
        "denoising": lambda: _dense(code_size, (512, 128), noise=0.2, shift=2 / 28),
        "sparse": lambda: _dense(code_size, (512, 128), l1=1e-4),
        "vae": lambda: _vae(code_size, (512, 128)),
        "conv-denoising": lambda: conv_denoising(code_size, tail_convs, _corruption(kind, noise)),
    }
    if kind not in builders:  # pca has a recipe but no network
        raise ValueError(f"{kind} is not an autoencoder")
    return builders[kind]()


def _corruption(kind: str, noise: float | None) -> Corruption:
    """The kind's training corruption, with ``noise`` when given."""
    spec = recipe(kind).corruption
    if spec is None:
        raise ValueError(f"{kind} trains without a corruption")
    return spec if noise is None else replace(spec, noise=noise)


def import_keras() -> Any:
    """``keras`` (and TensorFlow behind it), imported without TensorFlow's start-up lines.

    TensorFlow's C++ libraries print a oneDNN notice and absl's "All log messages before
    absl::InitializeLog()" warning (each twice) while they load, before ``TF_CPP_MIN_LOG_LEVEL``
    is read, so no setting hides them: the import runs with the process's stderr captured, and
    everything else written meanwhile is passed on. They are shown when ``TF_CPP_MIN_LOG_LEVEL``
    is 0 (``--verbose``); when it is unset it becomes 3, which hides TensorFlow's later C++ logs.
    Raises MissingDependencyError (one line naming the ``train`` extra) when they are not
    installed: the query path and PCA indexes never need them.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if level == "0" or "keras" in sys.modules:
            import keras

            return keras
        with _startup_lines_hidden():
            import keras
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            f"training an autoencoder needs TensorFlow and Keras ({exc.name or 'keras'} is not "
            "installed): pip install 'simsearch[train]', or build with --model pca"
        ) from None
    return keras


STARTUP_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
)


@contextmanager
def _startup_lines_hidden() -> Iterator[None]:
    """Capture file descriptor 2 while the block runs; then write back what it caught except
    the lines that contain one of STARTUP_NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(n in line for n in STARTUP_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


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


def mlp_decoder(code_size: int, hidden: Sequence[int]) -> Any:
    """code -> ReLU Dense layers of widths ``hidden`` -> 28x28 sigmoid pixels in [0, 1]."""
    import keras

    code_in = keras.Input((code_size,), name="code")
    y = code_in
    for width in hidden:
        y = keras.layers.Dense(width, activation="relu")(y)
    y = keras.layers.Dense(28 * 28, activation="sigmoid")(y)
    return keras.Model(code_in, keras.layers.Reshape((28, 28))(y), name="decoder")


def conv_encoder(
    code_size: int, convs: Sequence[tuple[int, int]], hidden: int | None = None
) -> Any:
    """pixels [0, 255] -> code: 3x3 Conv2D+BN+ReLU layers given as (filters, stride), then
    (when ``hidden``) a Dense+BN+ReLU layer of that width, then the linear code."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Reshape((28, 28, 1))(x)
    for filters, stride in convs:
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    if hidden:
        x = layers.Dense(hidden, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    code = layers.Dense(code_size, name="code")(x)
    return keras.Model(inputs, code, name="encoder")


def _dense_trunk(hidden: tuple[int, ...]) -> tuple[Any, Any]:
    """pixels [0, 255] -> ReLU Dense layers of widths ``hidden``: (the input, the last layer)."""
    import keras

    inputs = keras.Input((28, 28), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Flatten()(x)
    for width in hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
    return inputs, x


def _dense(
    code_size: int, hidden: tuple[int, ...], noise: float = 0.0, shift: float = 0.0, l1: float = 0.0
) -> Autoencoder:
    import keras

    inputs, x = _dense_trunk(hidden)
    code = keras.layers.Dense(code_size, name="code")(x)
    encoder = keras.Model(inputs, code, name="encoder")

    decoder = mlp_decoder(code_size, tuple(reversed(hidden)))
    return _assemble(encoder, decoder, noise=noise, shift=shift, l1=l1)


def _conv(code_size: int) -> Autoencoder:
    import keras

    encoder = conv_encoder(code_size, CONV_STACK)
    code_in = keras.Input((code_size,), name="code")
    y = keras.layers.Dense(7 * 7 * 64, activation="relu")(code_in)
    y = keras.layers.Reshape((7, 7, 64))(y)
    y = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(y)
    y = keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")(y)
    decoder = keras.Model(code_in, keras.layers.Reshape((28, 28))(y), name="decoder")
    return _assemble(encoder, decoder)


def conv_denoising(code_size: int, tail_convs: int, spec: Corruption) -> Autoencoder:
    """The default kind: a Conv2D+BN encoder (CONV_STACK, then ``tail_convs`` stride-1 convs at
    7x7, then a HIDDEN-wide Dense layer) and an MLP decoder, trained to reconstruct the clean
    image from a copy corrupted as ``spec`` says (in training only)."""
    convs = CONV_STACK + ((CONV_STACK[-1][0], 1),) * tail_convs
    encoder = conv_encoder(code_size, convs, HIDDEN)
    decoder = mlp_decoder(code_size, (512,))
    return denoising_autoencoder(encoder, decoder, corruption(spec))


def denoising_autoencoder(encoder: Any, decoder: Any, corrupt: Any) -> Autoencoder:
    """The training graph clean pixels -> ``corrupt`` -> encoder -> decoder, whose output is
    compared with the clean image."""
    import keras

    clean = keras.Input((28, 28), dtype="float32", name="pixels")
    autoencoder = keras.Model(clean, decoder(encoder(corrupt(clean))), name="autoencoder")
    return Autoencoder(autoencoder, encoder, decoder, corrupt)


def corruption(spec: Corruption, name: str = "corrupt") -> Any:
    """Training only: pixels [0, 255] -> a randomly corrupted copy (``spec``), each call new
    randomness. The noise is added on the [0, 1] scale, as Keras 3 wants."""
    import keras
    from keras import layers

    pixels = keras.Input((28, 28), dtype="float32", name="pixels")
    z = layers.Reshape((28, 28, 1))(pixels)
    z = layers.RandomTranslation(
        spec.shift / 28, spec.shift / 28, fill_mode="constant", interpolation="nearest"
    )(z)
    z = layers.RandomFlip("horizontal")(z)
    if spec.zoom:
        z = layers.RandomZoom(spec.zoom, spec.zoom, fill_mode="constant")(z)
    z = layers.Reshape((28, 28))(z)
    z = layers.Rescaling(1.0 / 255.0)(z)
    if spec.noise:
        z = layers.GaussianNoise(spec.noise)(z)
    if spec.gain is not None:
        z = random_gain(*spec.gain)(z)
    z = layers.Rescaling(255.0)(z)
    return keras.Model(pixels, z, name=name)


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
            return ops.concatenate([x, x[:, :, ::-1]], axis=0)

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
    keras = import_keras()
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

    inputs, x = _dense_trunk(hidden)
    mean = keras.layers.Dense(code_size, name="code")(x)
    log_var = keras.layers.Dense(code_size, kernel_initializer="zeros", name="log_var")(x)
    posterior = keras.Model(inputs, [mean, log_var], name="posterior")
    encoder = keras.Model(inputs, mean, name="encoder")

    decoder = mlp_decoder(code_size, tuple(reversed(hidden)))
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
