#!/usr/bin/env python3
"""Benchmark the autoencoder family under the evaluation protocol; prints ONE JSON object.

Each kind is trained on the Fashion-MNIST train split with the same budget (``--epochs`` with
early stopping on the validation loss, ``--patience``), indexed, and evaluated with
``simsearch.evaluate`` (catalog = train, queries = test, same class = relevant). Per model:
P@1, P@10, P@100, mAP@100, 10-NN accuracy, per-class P@10, reconstruction MSE on the test split
(pixels in [0, 1], from ``autoencoder.keras``), code size, epochs run and training time. The
raw-pixel and PCA baselines are computed once (they depend on the catalog and the code size only).

    .venv/bin/python scripts/bench_models.py                      # full run: long (see README)
    .venv/bin/python scripts/bench_models.py --limit 2000 --epochs 1 --limit-queries 500
    .venv/bin/python scripts/bench_models.py --kinds dense,conv --epochs-for conv=5

Progress and one status line per finished model go to stderr; stdout carries only the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from simsearch.recipes import DEFAULT_MODEL, RECIPES

# Every autoencoder kind, the default last (PCA is the baseline every run reports anyway).
KINDS = (*(k for k in RECIPES if k not in ("pca", DEFAULT_MODEL)), DEFAULT_MODEL)


def machine() -> dict[str, Any]:
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "timings depend on what else runs: see the load averages",
    }


def parse_epochs_for(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        kind, _, epochs = value.partition("=")
        if kind not in KINDS or not epochs.isdigit() or int(epochs) < 1:
            raise SystemExit(f"--epochs-for wants KIND=N with KIND in {', '.join(KINDS)}: {value}")
        out[kind] = int(epochs)
    return out


def reconstruction_mse(autoencoder_file: Path, images: np.ndarray) -> float:
    """Mean squared error of the reconstructions of ``images`` (n, 28, 28) uint8, in [0, 1]."""
    from simsearch.models import load_autoencoder

    model = load_autoencoder(autoencoder_file)
    total = 0.0
    for start in range(0, len(images), 2000):
        batch = images[start : start + 2000].astype(np.float32)
        out = np.asarray(model.predict(batch, batch_size=500, verbose=0), dtype=np.float64)
        total += float(((out - batch / 255.0) ** 2).sum())
    return total / (len(images) * 28 * 28)


def pca_reconstruction_mse(catalog: np.ndarray, images: np.ndarray, dim: int) -> float:
    """The same figure for PCA-``dim`` fit on the catalog (the optimal linear autoencoder)."""
    from simsearch.encoders import fit_pca

    mean, components = fit_pca(catalog, dim)
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean
    restored = (x @ components) @ components.T
    return float(((x - restored) ** 2).mean())


def bench_one(
    kind: str, epochs: int, args: argparse.Namespace, workdir: Path, with_baselines: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    from simsearch.build import BuildConfig, build_index
    from simsearch.data import load_split
    from simsearch.evaluate import evaluate
    from simsearch.progress import Reporter
    from simsearch.search_index import SearchIndex
    from simsearch.training import TrainConfig

    reporter = Reporter(quiet=args.quiet)
    directory = workdir / kind
    config = BuildConfig(
        limit=args.limit,
        data_dir=args.data_dir,
        train=TrainConfig(
            model=kind,
            code_size=args.code_size,
            epochs=epochs,
            patience=args.patience,
            seed=args.seed,
        ),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    build_index(config, directory, force=True, reporter=reporter)
    build_seconds = time.perf_counter() - start
    index = SearchIndex.load(directory)  # reloaded: the files the manifest lists, as users get them
    result = evaluate(
        index, args.data_dir, limit=args.limit_queries, reporter=reporter, baselines=with_baselines
    )
    test = load_split("test", args.data_dir).images
    test = test if args.limit_queries is None else test[: args.limit_queries]
    model_info = index.manifest["model"]
    epochs_run = int(model_info["epochs_run"])
    train_seconds = float(model_info["train_seconds"])
    entry = {
        **{k: v for k, v in result["model"].items() if k not in ("kind", "dim")},
        "reconstruction_mse": round(
            reconstruction_mse(index.model_file("autoencoder.keras"), test), 6
        ),
        "code_size": index.dim,
        "epochs_budget": epochs,
        "epochs_run": epochs_run,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / max(1, epochs_run), 1),
        "build_seconds": round(build_seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # build + evaluation, all threads
        "final_val_loss": model_info.get("final_val_loss"),
        "per_class_P@10": {name: e["P@10"] for name, e in result["per_class"].items()},
    }
    if args.keep is None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return entry, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated model kinds")
    parser.add_argument("--epochs", type=int, default=10, help="epoch budget (early stopping)")
    parser.add_argument(
        "--epochs-for", action="append", default=[], metavar="KIND=N", help="per-kind budget"
    )
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience")
    parser.add_argument("--code-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N train items only")
    parser.add_argument("--limit-queries", type=int, default=None, help="first N test queries")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the indexes in this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    budgets = {kind: args.epochs for kind in kinds} | parse_epochs_for(args.epochs_for)

    started = time.perf_counter()
    info = machine()
    models: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="simsearch-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        for kind in kinds:
            entry, result = bench_one(kind, budgets[kind], args, workdir, not baselines)
            models[kind] = entry
            if not baselines:
                baselines = result["baselines"]
                protocol = result["protocol"]
            print(f"[bench_models] {kind}: {json.dumps(entry)}", file=sys.stderr, flush=True)
        if baselines:
            from simsearch.data import load_split

            catalog = load_split("train", args.data_dir).images
            catalog = catalog if args.limit is None else catalog[: args.limit]
            test = load_split("test", args.data_dir).images
            test = test if args.limit_queries is None else test[: args.limit_queries]
            dim = baselines["pca"]["dim"]
            baselines["pca"]["reconstruction_mse"] = round(
                pca_reconstruction_mse(catalog, test, dim), 6
            )
            baselines["raw_pixels"]["reconstruction_mse"] = 0.0

    print(
        json.dumps(
            {
                "benchmark": "autoencoder family under the evaluation protocol",
                "machine": info,
                "protocol": protocol,
                "config": {
                    "kinds": kinds,
                    "epochs": budgets,
                    "patience": args.patience,
                    "code_size": args.code_size,
                    "seed": args.seed,
                    "limit": args.limit,
                    "limit_queries": args.limit_queries,
                    "reconstruction_mse": "MSE on the test queries, pixels in [0, 1]",
                },
                "baselines": baselines,
                "models": models,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
