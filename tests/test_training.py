"""Training internals with behaviour of their own: the brightness jitter, the contrastive term,
the decoder refit, the mirror-averaged encoder, the tail convs, the defaults each kind fills in,
and that a conv-denoising autoencoder loads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simsearch.errors import ConfigError
from simsearch.training import TrainConfig, info_nce_loss, train
from tests.fakedata import make_images


def test_random_gain_scales_each_image_in_training_only() -> None:
    from simsearch.models import random_gain

    layer = random_gain(0.6, 1.4)
    x = np.full((64, 28, 28), 0.5, np.float32)
    x[:, 0, 0] = 0.9  # 0.9 * gain > 1 for gains above 1.11: capped at 1
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    gains = out[:, 5, 5] / 0.5
    assert gains.min() >= 0.6 - 1e-6 and gains.max() <= 1.4 + 1e-6
    assert gains.std() > 0.1  # one draw per image, not one per batch
    assert np.allclose(out[:, 1:, :], gains[:, None, None] * 0.5)  # the same gain over an image
    assert out.max() <= 1.0 and np.allclose(out[:, 0, 0], np.minimum(0.9 * gains, 1.0))


def test_conv_denoising_autoencoder_saves_and_loads_back(tmp_path: Path) -> None:
    """The saved training graph holds the custom gain layer: loading must find it."""
    from simsearch.models import build_model, load_autoencoder

    model = build_model("conv-denoising", 8)
    x = make_images(4, seed=1)[0].astype(np.float32)
    before = np.asarray(model.autoencoder(x, training=False))
    model.autoencoder.save(tmp_path / "autoencoder.keras")
    loaded = load_autoencoder(tmp_path / "autoencoder.keras")
    assert np.allclose(np.asarray(loaded(x, training=False)), before, atol=1e-6)


def test_info_nce_rewards_views_that_agree() -> None:
    loss = info_nce_loss(0.1)
    codes = np.eye(8, dtype=np.float32) * 3.0  # 8 images whose codes are orthogonal
    agree = np.asarray(loss(None, np.concatenate([codes, codes], axis=1)))
    swapped = np.asarray(loss(None, np.concatenate([codes, codes[::-1]], axis=1)))
    same = np.ones((8, 8), np.float32)  # every image has the same code: chance level
    chance = np.asarray(loss(None, np.concatenate([same, same], axis=1)))
    assert agree.shape == (8,) and agree.max() < 1e-3
    assert swapped.min() > 5.0
    assert np.allclose(chance, np.log(8.0), atol=1e-5)


def test_contrastive_training_records_its_term(tmp_path: Path) -> None:
    images, _ = make_images(120, seed=2)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32, contrast_weight=0.1)
    trained = train(images, config, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert {"loss", "val_loss", "contrast_loss", "reconstruction_loss"} <= set(history)
    assert trained.encoder_file.exists() and trained.describe()["contrast_weight"] == 0.1


def test_contrast_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="contrast"):
        TrainConfig(contrast_weight=-1.0).validate()
    with pytest.raises(ConfigError, match="contrast"):
        TrainConfig(contrast_temperature=0.0).validate()
    with pytest.raises(ConfigError, match="other than pca or vae"):
        TrainConfig(model="vae", contrast_weight=0.1).validate()


def test_refit_decoder_fits_clean_codes_and_leaves_the_encoder() -> None:
    from keras import losses

    from simsearch.models import build_model
    from simsearch.training import refit_decoder

    model = build_model("conv-denoising", 8)
    x = make_images(1024, seed=3)[0].astype(np.float32)
    codes = np.asarray(model.encoder(x, training=False))
    before = float(np.mean(losses.binary_crossentropy(x / 255.0, model.autoencoder(x))))
    refit_decoder(model, codes, x, "binary_crossentropy", 32)
    after = float(np.mean(losses.binary_crossentropy(x / 255.0, model.autoencoder(x))))
    assert after < before - 0.03
    assert np.array_equal(np.asarray(model.encoder(x, training=False)), codes)


def test_conv_denoising_encoder_gives_a_mirror_image_the_same_code(tmp_path: Path) -> None:
    """The exported encoder (ONNX, the query path) averages an image's code with its mirror
    image's, so a flipped photo finds the same items; the saved Keras copy loads and agrees."""
    from simsearch.encoders import load_encoder
    from simsearch.models import load_autoencoder

    images, _ = make_images(200, seed=3)
    trained = train(images, TrainConfig(code_size=8, epochs=1, batch_size=32), tmp_path)
    encoder = load_encoder(trained.encoder_file)
    codes = encoder.encode(images[:20])
    mirrored = encoder.encode(images[:20, :, ::-1])
    assert np.allclose(codes, mirrored, atol=1e-5)
    assert np.allclose(encoder.encode(images[:1]), codes[:1], atol=1e-5)  # a single query too
    assert not np.allclose(codes[0], codes[1], atol=1e-3)  # and still tells images apart
    keras_encoder = load_autoencoder(tmp_path / "encoder.keras")
    assert np.allclose(np.asarray(keras_encoder(images[:20].astype(np.float32))), codes, atol=1e-4)


def test_no_mirror_exports_the_plain_encoder(tmp_path: Path) -> None:
    from simsearch.encoders import load_encoder

    images, _ = make_images(200, seed=3)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32, mirror=False)
    encoder = load_encoder(train(images, config, tmp_path).encoder_file)
    assert not np.allclose(encoder.encode(images[:20]), encoder.encode(images[:20, :, ::-1]))
    with pytest.raises(ConfigError, match="--mirror needs an autoencoder"):
        TrainConfig(model="pca", mirror=True).validate()


def test_effective_config_fills_in_each_kinds_defaults() -> None:
    """What is trained (and recorded in the manifest's model section) for each "None = the
    default" option; values given explicitly are kept."""

    def filled(config: TrainConfig) -> tuple[Any, ...]:
        effective = config.effective()
        return (effective.whiten, effective.mirror, effective.tail_convs, effective.noise)

    assert filled(TrainConfig()) == (0.25, True, 0, 0.1)
    assert filled(TrainConfig(use_labels=True)) == (0.25, True, 0, 0.0)
    assert filled(TrainConfig(model="pca")) == (0.0, False, 0, None)
    assert filled(TrainConfig(model="dense", use_labels=True)) == (0.0, False, 0, None)
    given = TrainConfig(use_labels=True, whiten=0.0, mirror=False, tail_convs=2, noise=0.05)
    assert filled(given) == (0.0, False, 2, 0.05)


def test_tail_convs_deepen_the_exported_encoder(tmp_path: Path) -> None:
    from simsearch.encoders import load_encoder
    from simsearch.models import load_autoencoder

    images, _ = make_images(200, seed=3)
    config = TrainConfig(code_size=8, epochs=1, batch_size=32, tail_convs=2)
    trained = train(images, config, tmp_path)
    assert trained.describe()["tail_convs"] == 2
    strides = sorted(conv.strides for conv in convs(load_autoencoder(tmp_path / "encoder.keras")))
    assert strides == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert load_encoder(trained.encoder_file).encode(images[:3]).shape == (3, 8)
    for bad, message in [
        (TrainConfig(tail_convs=5), "between 0 and 4"),
        (TrainConfig(model="dense", tail_convs=1), "needs --model conv-denoising"),
        (TrainConfig(noise=0.6), "between 0 and 0.5"),
        (TrainConfig(model="vae", noise=0.1), "needs --model conv-denoising"),
        (TrainConfig(model="pca", whiten=0.25), "--whiten needs an autoencoder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            bad.validate()


def convs(layer: Any) -> list[Any]:
    """The Conv2D layers of a Keras model, through its nested models."""
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        return [layer]
    return [conv for inner in getattr(layer, "layers", []) for conv in convs(inner)]
