#!/usr/bin/env python3
"""Train one model variant and score it on the validation slice and the protocol; prints ONE JSON.

The model is trained with ``simsearch.training.train`` (the library's own loop, the held-out
last 10% of the train split for early stopping), exported WITHOUT whitening, and its codes
computed with the exported ONNX encoder (the query path). The whitening of ``--whiten-powers``
is then fit on the 60,000 train codes (as ``fold_whitening`` does) and every power is scored:

- ``validation``: catalog = train[:54000], queries = train[54000:] (the slice training held out;
  use this to choose hyperparameters),
- ``protocol``: catalog = train (60,000), queries = test (10,000) (the figures users see).

Each power is scored on the plain codes and on the mean code of the image and its mirror image
(" flip-mean"; the library's conv-denoising encoder already averages them: then the same).
Metrics are ``simsearch.evaluate.score_neighbours`` (P@1, P@10, P@100, mAP@100, knn10).

    python scripts/research/research_model.py --epochs 20                 # the default model
    python scripts/research/research_model.py --use-labels --epochs 20
    python scripts/research/research_model.py --variant erase --epochs 16
    python scripts/research/research_model.py --variant w48 --tail-convs 1 --noise 0
    python scripts/research/research_model.py --model pca --whiten-powers 0   # a baseline

``--variant`` changes the conv-denoising network or its corruption (``variants.py``: each a
builder handed to ``train``): ``base`` (the library's), ``wide`` (conv width 64, hidden 512),
``w64``/``w48`` (conv width 64/48), ``double`` (a stride-1 conv before each strided one),
``shift3`` (+-3 px shifts), ``nogain`` (no brightness jitter), ``gain:LOW:HIGH`` (another jitter
range), ``nozoom`` (no zoom), ``erase`` (+ random erasing of one rectangle, p=0.5), ``rotate``
(+ rotations up to +-10 degrees), ``gamma`` (+ a random gamma in [1/1.5, 1.5]), ``sphere`` (the
decoder reads the L2-normalised code). ``--tail-convs N`` and ``--noise S`` are the library's
options and apply to every variant. ``--contrast-weight W`` adds an InfoNCE term between two
random views to any variant (without ``--use-labels``); ``--recalibrate-bn`` also scores the
same trained encoder with its BatchNorm statistics reset on clean images.
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


def recalibrate_batchnorm(encoder: Any, images: np.ndarray, n: int = 8192) -> int:
    """Reset the encoder's BatchNormalization statistics to those of clean ``images``.

    Training feeds the encoder corrupted images (noise, shifts, flips, gain), so the moving
    statistics BatchNorm keeps describe noisy inputs; the catalog and the queries are clean. One
    pass in training mode with momentum 0 over ``n`` evenly spaced images makes the statistics
    those of clean inputs ("precise BN"). Returns the number of BatchNormalization layers reset.
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
    from simsearch.recipes import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--variant", default="base")
    for name in ("code_size", "epochs", "patience", "batch_size", "seed", "tail_convs"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
        )
    for name in ("learning_rate", "label_weight", "label_scale", "label_margin"):
        option = "--" + name.replace("_", "-")
        parser.add_argument(option, type=float, default=getattr(defaults, name))
    parser.add_argument("--noise", type=float, default=None, help="None = the recipe's")
    parser.add_argument("--use-labels", action="store_true")
    parser.add_argument("--contrast-weight", type=float, default=0.0)
    parser.add_argument("--contrast-temperature", type=float, default=0.2)
    parser.add_argument("--recalibrate-bn", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N only")
    parser.add_argument("--whiten-powers", default="0,0.25,0.5")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="a name for the variant in the JSON")
    parser.add_argument("--save-codes", default=None, help="write the unwhitened codes (npz)")
    args = parser.parse_args(argv)
    if args.contrast_weight and args.use_labels:
        parser.error("--contrast-weight works without --use-labels only")

    from variants import builder, with_contrast

    from simsearch.data import load_split
    from simsearch.encoders import load_encoder
    from simsearch.training import default_builder, train

    build = builder(args.variant)
    if args.contrast_weight:
        weight, temperature = args.contrast_weight, args.contrast_temperature
        build = with_contrast(build or default_builder, weight, temperature)
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
            builder=build,
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
                "contrast_weight": args.contrast_weight,
                "contrast_temperature": args.contrast_temperature,
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
