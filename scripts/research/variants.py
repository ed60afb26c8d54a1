"""Research variants of the default model (conv-denoising), for ``research_model.py``.

Each variant is a builder for ``simsearch.training.train(..., builder=...)``: it receives the
run's effective TrainConfig and returns a ``simsearch.models.Autoencoder`` assembled from the
library's public parts, so the library's training, validation, whitening and export run
unchanged around it. Nothing here is reachable from the CLI; ``scripts/research/README.md``
says what each variant measured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from simsearch import models
from simsearch.recipes import RECIPES, Corruption, TrainConfig
from simsearch.training import Builder

DEFAULT = RECIPES["conv-denoising"].corruption or Corruption()


def conv_denoising(
    config: TrainConfig,
    width: int = 32,
    hidden: int = models.HIDDEN,
    double: bool = False,
    tail_convs: int | None = None,
    spec: Corruption | None = None,
    extra: Any = None,
) -> models.Autoencoder:
    """The default architecture with research knobs: conv ``width`` (then 2x), the ``hidden``
    Dense width, ``double`` (a stride-1 conv before each strided one), ``tail_convs`` (None =
    the config's), the corruption ``spec`` (None = the recipe's with the config's noise) and an
    ``extra`` training-only layer applied to the corrupted pixels (in [0, 255])."""
    import keras

    strides = (1, 2) if double else (2,)
    convs = [(filters, stride) for filters in (width, 2 * width) for stride in strides]
    tail = config.tail_convs if tail_convs is None else tail_convs
    convs += [(2 * width, 1)] * tail
    encoder = models.conv_encoder(config.code_size, convs, hidden)
    decoder = models.mlp_decoder(config.code_size, (512,))
    corrupt = models.corruption(spec or _spec(config))
    if extra is not None:
        corrupt = keras.Sequential([corrupt, extra], name="corrupt")
    return models.denoising_autoencoder(encoder, decoder, corrupt)


def spherical(config: TrainConfig) -> models.Autoencoder:
    """Decode from the L2-normalised code (times sqrt(D)): trains the geometry cosine search
    uses; the exported encoder is unchanged (the index normalises anyway)."""
    import keras

    model = conv_denoising(config)
    clean = keras.Input((28, 28), dtype="float32", name="pixels")
    code = model.encoder(model.corrupt(clean))
    scale = config.code_size**0.5
    unit = keras.layers.Lambda(lambda c: models.l2_normalize(c) * scale)(code)
    autoencoder = keras.Model(clean, model.decoder(unit), name="autoencoder")
    return models.Autoencoder(autoencoder, model.encoder, model.decoder, model.corrupt)


def random_erasing(p: float = 0.5, low: int = 6, high: int = 14) -> Any:
    """Training only: with probability p, zero one random rectangle (side low..high px) of
    (n, 28, 28) pixels."""
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


def random_rotation(degrees: float = 10.0) -> Any:
    """Training only: rotate (n, 28, 28) images by up to +-``degrees``."""
    import keras
    from keras import layers

    pixels = keras.Input((28, 28), dtype="float32")
    z = layers.Reshape((28, 28, 1))(pixels)
    z = layers.RandomRotation(degrees / 360.0, fill_mode="constant")(z)
    return keras.Model(pixels, layers.Reshape((28, 28))(z), name="rotation")


def random_gamma(most: float = 1.5) -> Any:
    """Training only: raise each image's pixels (scaled to [0, 1]) to a random power in
    [1/most, most] (contrast changes that a gain cannot make); the sign keeps the noise's zero
    mean."""
    import keras
    from keras import ops

    class RandomGamma(keras.layers.Layer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed = keras.random.SeedGenerator(3)

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            shape = (ops.shape(x)[0], 1, 1)
            power = ops.exp(keras.random.uniform(shape, -1.0, 1.0, seed=self.seed) * np.log(most))
            unit = x / 255.0
            return ops.sign(unit) * ops.power(ops.abs(unit) + 1e-6, power) * 255.0

    return RandomGamma(name="random_gamma")


def with_contrast(build: Builder, weight: float, temperature: float) -> Builder:
    """``build``'s model plus a SimCLR-style contrastive term: the codes of two random views of
    each image (shifts up to 3 px, flip, zoom +-10%, noise and, half the time, an erased
    rectangle) are pulled together by InfoNCE (cosine / ``temperature``, weight ``weight``),
    and the reconstruction is decoded from the first view's code. Without labels only."""

    def builder(config: TrainConfig) -> models.Autoencoder:
        import keras

        from simsearch.models import corruption

        model = build(config)
        view_spec = Corruption(shift=3, zoom=0.1, noise=0.1, gain=None)
        view = keras.Sequential([corruption(view_spec, name="view"), random_erasing(0.5)])
        pixels = keras.Input((28, 28), dtype="float32", name="pixels")
        code = model.encoder(view(pixels))
        other = model.encoder(view(pixels))  # a second call draws a second, independent view
        code = info_nce_term(weight, temperature)([code, other])
        autoencoder = keras.Model(pixels, model.decoder(code), name="autoencoder")
        return models.Autoencoder(autoencoder, model.encoder, model.decoder, model.corrupt)

    return builder


def info_nce_term(weight: float, temperature: float) -> Any:
    """A layer [code of view 1, code of view 2] -> code of view 1 that adds ``weight`` times the
    symmetric InfoNCE loss of the batch: each view's positive is the other view of the same
    image, its negatives the other images' views."""
    import keras

    class InfoNCE(keras.layers.Layer):
        def call(self, codes: Any) -> Any:
            first, second = codes
            self.add_loss(weight * info_nce(first, second, temperature))
            return first

    return InfoNCE(name="info_nce")


def info_nce(first: Any, second: Any, temperature: float) -> Any:
    """Mean symmetric InfoNCE of two (n, d) batches of codes whose rows i are views of image i."""
    from keras import losses, ops

    a, b = models.l2_normalize(first), models.l2_normalize(second)
    logits = ops.matmul(a, ops.transpose(b)) / temperature
    same = ops.arange(ops.shape(logits)[0])
    forward = losses.sparse_categorical_crossentropy(same, logits, from_logits=True)
    backward = losses.sparse_categorical_crossentropy(same, ops.transpose(logits), from_logits=True)
    return ops.mean((forward + backward) / 2)


def _gain(variant: str) -> Builder:
    low, high = (float(b) for b in variant.split(":")[1:])  # gain:LOW:HIGH
    return lambda config: conv_denoising(config, spec=replace(_spec(config), gain=(low, high)))


def _spec(config: TrainConfig) -> Corruption:
    """The recipe's corruption with the run's noise."""
    return DEFAULT if config.noise is None else replace(DEFAULT, noise=config.noise)


# Relative to the default recipe. --tail-convs and --noise (TrainConfig options) apply to each.
VARIANTS: dict[str, Builder] = {
    "wide": lambda config: conv_denoising(config, width=64, hidden=512),
    "w64": lambda config: conv_denoising(config, width=64),
    "w48": lambda config: conv_denoising(config, width=48),
    "double": lambda config: conv_denoising(config, double=True),
    "shift3": lambda config: conv_denoising(config, spec=replace(_spec(config), shift=3)),
    "nogain": lambda config: conv_denoising(config, spec=replace(_spec(config), gain=None)),
    "nozoom": lambda config: conv_denoising(config, spec=replace(_spec(config), zoom=0.0)),
    "erase": lambda config: conv_denoising(config, extra=random_erasing()),
    "rotate": lambda config: conv_denoising(config, extra=random_rotation()),
    "gamma": lambda config: conv_denoising(config, extra=random_gamma()),
    "sphere": spherical,
}


def builder(variant: str) -> Builder | None:
    """The builder of ``variant`` ("base" = None, the library's own; "gain:LOW:HIGH" for another
    brightness range); SystemExit naming the variants when unknown."""
    if variant == "base":
        return None
    if variant.startswith("gain:"):
        return _gain(variant)
    if variant not in VARIANTS:
        raise SystemExit(
            f"unknown variant {variant}; choose base, gain:LOW:HIGH or {list(VARIANTS)}"
        )
    return VARIANTS[variant]
