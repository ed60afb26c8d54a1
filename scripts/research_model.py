#!/usr/bin/env python3
"""Train one model variant and score it on the validation slice and the protocol; prints ONE JSON.

Issue #4 research (retrieval quality). The model is trained with ``simsearch.training.train``
(the library's own loop, the held-out last 10% of the train split for early stopping), exported
WITHOUT whitening, and its codes computed with the exported ONNX encoder (the query path). The
whitening of ``--whiten-powers`` is then fit on the 60,000 train codes (as ``fold_whitening``
does) and every power is scored twice:

- ``validation``: catalog = train[:54000], queries = train[54000:] (the slice training held out;
  use this to choose hyperparameters),
- ``protocol``: catalog = train (60,000), queries = test (10,000) (the contract's figures).

Metrics are ``simsearch.evaluate.score_neighbours`` (P@1, P@10, P@100, mAP@100, knn10).

    python scripts/research_model.py --epochs 10                        # the default model
    python scripts/research_model.py --use-labels --label-weight 1 --epochs 10
    python scripts/research_model.py --variant erase --epochs 16        # a Part B variant
    python scripts/research_model.py --model pca --whiten-powers 0      # a baseline

Variants (``--variant``) change the conv-denoising architecture or its training corruption
without touching the library (``simsearch.models.build_model`` is patched for the run):
``base`` (the library's: with ``--use-labels`` no noise), ``erase`` (+ random
erasing of one rectangle, p=0.5), ``wide`` (conv width 64, hidden 512), ``w64`` (conv width 64,
hidden 256), ``shift3`` (+-3 px shifts), ``double`` (a stride-1 conv before each strided one),
``tail1``/``tail2`` (one/two stride-1 convs at 7x7 after the strided ones), ``w48-tail1``
(conv width 48 and tail1), ``nonoise``/``tail1-nonoise`` (without the Gaussian noise),
``sphere`` (the decoder reads the L2-normalised code), ``nogain`` (no brightness jitter),
``gain:LOW:HIGH`` (another jitter range), ``nozoom`` (no zoom: the default before session 4),
``gamma`` (+ a random gamma in [1/1.5, 1.5]), ``rotate`` (+ rotations up to +-10 degrees). Each
is relative to the unsupervised default (the noise, no tail conv): a variant measured in the
README before a later default change was measured then.

``--contrast-weight W`` adds the library's InfoNCE term between two random views
(``TrainConfig.contrast_weight``); ``--recalibrate-bn`` also scores the same trained encoder
with its BatchNorm statistics reset on clean images (``recalibrate_batchnorm``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_VAL = 6000  # the last 10% of the train split, as TrainConfig.validation_fraction holds out


def scores(catalog: np.ndarray, cat_labels: np.ndarray, queries: np.ndarray, q_labels: np.ndarray):
    from simsearch.encoders import normalize
    from simsearch.evaluate import exact_search, score_neighbours

    s, rows = exact_search(normalize(catalog), normalize(queries), 100)
    counts = np.bincount(cat_labels, minlength=10)[q_labels]
    metrics = score_neighbours(cat_labels[rows], s, q_labels, counts).metrics
    return {k: round(v, 4) for k, v in metrics.items()}


def whiten(train_codes: np.ndarray, codes: list[np.ndarray], power: float) -> list[np.ndarray]:
    """The map ``simsearch.training.fold_whitening`` folds into the encoder, in numpy."""
    from simsearch.training import whitening_map

    if not power:
        return codes
    mean, weights = whitening_map(train_codes, power)
    return [(c - mean) @ weights for c in codes]


def patch_variant(variant: str) -> None:
    """Replace conv-denoising by a variant for this process (research only)."""
    if variant == "base":
        return
    import simsearch.models as models

    original = models.build_model

    def build_model(kind: str, code_size: int, tail_convs: int = 0, noise: Any = None) -> Any:
        if kind != "conv-denoising":
            return original(kind, code_size, tail_convs, noise)
        return conv_denoising_variant(code_size, variant)  # the variant's own tail convs

    models.build_model = build_model


def conv_denoising_variant(code_size: int, variant: str) -> Any:
    from simsearch.models import _conv_denoising

    if variant == "wide":
        return _conv_denoising(code_size, width=64, hidden=512)
    if variant == "w64":
        return _conv_denoising(code_size, width=64)
    if variant == "shift3":
        return _conv_denoising(code_size, shift=3)
    if variant == "erase":
        from simsearch.models import random_erasing

        return _conv_denoising(code_size, extra_corruption=random_erasing())
    if variant == "double":
        return _conv_denoising(code_size, double=True)
    if variant in ("tail1", "tail2"):
        return _conv_denoising(code_size, tail_convs=int(variant[-1]))
    if variant in ("nonoise", "tail1-nonoise"):
        return _conv_denoising(code_size, tail_convs=int(variant == "tail1-nonoise"), noise=0.0)
    if variant == "w48-tail1":
        return _conv_denoising(code_size, width=48, tail_convs=1)
    if variant == "sphere":
        return spherical_decoder(_conv_denoising(code_size), code_size)
    if variant == "nogain":
        return _conv_denoising(code_size, gain=None)
    if variant == "nozoom":  # the default before the zoom
        return _conv_denoising(code_size, zoom=0.0)
    if variant == "rotate":
        return _conv_denoising(code_size, extra_corruption=random_rotation())
    if variant == "gamma":
        return _conv_denoising(code_size, extra_corruption=random_gamma())
    if variant.startswith("gain:"):  # gain:LOW:HIGH
        low, high = (float(b) for b in variant.split(":")[1:])
        return _conv_denoising(code_size, gain=(low, high))
    raise SystemExit(f"unknown variant {variant}")


def spherical_decoder(model: Any, code_size: int) -> Any:
    """Decode from the L2-normalised code (times sqrt(D)): trains the geometry cosine search
    uses; the exported encoder is unchanged (the index normalises anyway)."""
    import keras

    from simsearch.models import Autoencoder, l2_normalize

    clean = keras.Input((28, 28), dtype="float32", name="pixels")
    code = model.encoder(model.corrupt(clean))
    unit = keras.layers.Lambda(lambda c: l2_normalize(c) * (code_size**0.5))(code)
    autoencoder = keras.Model(clean, model.decoder(unit), name="autoencoder")
    return Autoencoder(autoencoder, model.encoder, model.decoder, model.corrupt)


def random_rotation(degrees: float = 10.0) -> Any:
    """Training only: rotate (n, 28, 28) images by up to +-``degrees``."""
    import keras
    from keras import layers

    pixels = keras.Input((28, 28), dtype="float32")
    z = layers.Reshape((28, 28, 1))(pixels)
    z = layers.RandomRotation(degrees / 360.0, fill_mode="constant")(z)
    return keras.Model(pixels, layers.Reshape((28, 28))(z), name="rotation")


def random_gamma(most: float = 1.5) -> Any:
    """Training only: raise each image's [0, 1] pixels to a random power in [1/most, most]
    (contrast changes that a gain cannot make); the sign keeps the noise's zero mean."""
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
            return ops.sign(x) * ops.power(ops.abs(x) + 1e-6, power)

    return RandomGamma(name="random_gamma")


def recalibrate_batchnorm(encoder: Any, images: np.ndarray, n: int = 8192) -> int:
    """Reset the encoder's BatchNormalization statistics to those of clean ``images``.

    Training feeds the encoder corrupted images (noise, shifts, flips, gain), so the moving
    statistics BatchNorm keeps describe noisy inputs (the first layer's variance ~4x a clean
    image's); the catalog and the queries are clean. One pass in training mode with momentum 0
    over ``n`` evenly spaced images makes the statistics those of clean inputs ("precise BN").
    Returns the number of BatchNormalization layers reset. Measured, not shipped: it fixes
    the reconstructions of the gain-jittered model but costs 0.4 P@10 (README).
    """
    import keras

    batchnorm = keras.layers.BatchNormalization
    layers = [layer for layer in encoder.layers if isinstance(layer, batchnorm)]
    if not layers:
        return 0
    rows = np.linspace(0, len(images) - 1, min(n, len(images))).astype(np.int64)
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        encoder(images[rows].astype(np.float32), training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def log_reporter() -> Any:
    """Status lines (one per epoch) with a timestamp on stderr, no progress bars."""
    from simsearch.progress import Reporter

    class LogReporter(Reporter):
        def task(self, description: str, total: float | None, unit: str = "items") -> Any:
            return Reporter(quiet=True).task(description, total, unit)

        def message(self, text: str) -> None:
            print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)

    return LogReporter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv-denoising")
    parser.add_argument("--variant", default="base")
    parser.add_argument("--code-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use-labels", action="store_true")
    parser.add_argument("--label-weight", type=float, default=1.0)
    parser.add_argument("--label-scale", type=float, default=30.0)
    parser.add_argument("--label-margin", type=float, default=0.35)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--contrast-weight", type=float, default=0.0)
    parser.add_argument("--contrast-temperature", type=float, default=0.2)
    parser.add_argument("--recalibrate-bn", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N only")
    parser.add_argument("--whiten-powers", default="0,0.25,0.5")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="a name for the variant in the JSON")
    parser.add_argument("--save-codes", default=None, help="write the unwhitened codes (npz)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from simsearch.data import load_split
    from simsearch.encoders import load_encoder
    from simsearch.training import TrainConfig, train

    patch_variant(args.variant)
    train_split = load_split("train", args.data_dir)
    test_split = load_split("test", args.data_dir)
    # Every training option is named after a TrainConfig field; the exported encoder is left
    # unwhitened (the powers are scored below).
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    options = {name: value for name, value in vars(args).items() if name in fields}
    config = TrainConfig(whiten=0.0, **options)
    with tempfile.TemporaryDirectory(prefix="simsearch-research-") as tmp:
        trained = train(
            train_split.images[: args.limit],
            config,
            Path(tmp),
            log_reporter(),
            labels=train_split.labels[: args.limit] if args.use_labels else None,
        )
        encoder = load_encoder(trained.encoder_file)
        train_codes = encoder.encode(train_split.images)
        test_codes = encoder.encode(test_split.images)
        if args.recalibrate_bn:
            # Same trained model, BatchNorm statistics reset on the clean train images.
            from simsearch.models import load_autoencoder

            keras_encoder = load_autoencoder(Path(tmp) / "autoencoder.keras").get_layer("encoder")
            recalibrate_batchnorm(keras_encoder, train_split.images)
            recal_train = keras_encoder.predict(train_split.images.astype(np.float32), 1024, 0)
            recal_test = keras_encoder.predict(test_split.images.astype(np.float32), 1024, 0)
        # The mean code of the image and its mirror image (the library's exported encoder
        # already averages them for conv-denoising, models.MIRROR_AVERAGED: then the same).
        flip_train = (train_codes + encoder.encode(train_split.images[:, :, ::-1])) / 2
        flip_test = (test_codes + encoder.encode(test_split.images[:, :, ::-1])) / 2

    if args.save_codes:  # for post-hoc study (combinations, other whitenings)
        np.savez(
            args.save_codes,
            train=train_codes,
            test=test_codes,
            flip_train=flip_train,
            flip_test=flip_test,
        )
    tl, ql = train_split.labels.astype(np.int64), test_split.labels.astype(np.int64)
    results: dict[str, Any] = {}
    candidates = [("", (train_codes, test_codes)), (" flip-mean", (flip_train, flip_test))]
    if args.recalibrate_bn:
        candidates.append((" recalibrated-bn", (recal_train, recal_test)))
    for flip, (codes_tr, codes_te) in candidates:
        for power in [float(p) for p in args.whiten_powers.split(",")]:
            tr, te = whiten(codes_tr, [codes_tr, codes_te], power)
            results[f"whiten={power}{flip}"] = {
                "validation": scores(tr[:-N_VAL], tl[:-N_VAL], tr[-N_VAL:], tl[-N_VAL:]),
                "protocol": scores(tr, tl, te, ql),
            }
    history = trained.history
    print(
        json.dumps(
            {
                "name": args.name or args.variant,
                "variant": args.variant,
                "config": dataclasses.asdict(config),
                "epochs_run": trained.epochs_run,
                "train_seconds": round(trained.seconds, 1),
                "seconds_per_epoch": round(trained.seconds / max(1, trained.epochs_run), 1),
                "final_val_loss": history.get("val_loss", [None])[-1],
                "best_val_loss": min(history.get("val_loss", [float("nan")])),
                "history": history,
                "results": results,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
