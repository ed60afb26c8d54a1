"""Regenerate the README pictures from an index; print ONE JSON object (files and timings).

    .venv/bin/python scripts/make_figures.py [--index-dir DIR] [--out-dir scripts/figures]
                                            [--repeat N] [--sample 3000] [--quiet]

Writes into --out-dir:
  query_grid.png      three Fashion-MNIST *test* items (not in the catalog) as queries: one as a
                      photo-like JPEG (dark garment on white, 400x400), two as 28x28 PNGs;
                      frames: green = same class as the query, red = another class
  map.png             t-SNE of --sample catalog embeddings with thumbnails (timed --repeat times)
  reconstruction.png  10 catalog items, the model's reconstructions and PCA's (same code size)
  training_curve.png  train/validation loss per epoch from the index's history.json (if any)

The PNGs are reduced to a 256-colour palette so they stay small in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from simsearch import figures
from simsearch.data import load_split
from simsearch.progress import Reporter
from simsearch.search_index import SearchIndex, default_index_dir

QUERY_CLASSES = (9, 6, 8)  # Ankle boot (as a photo-like JPEG), Shirt (the hardest class), Bag
QUERY_K = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "figures")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (test split).")
    parser.add_argument("--repeat", type=int, default=3, help="Timed runs of the map.")
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    reporter = Reporter(args.quiet)
    index_dir = args.index_dir or default_index_dir()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    index = SearchIndex.load(index_dir)
    model = index.manifest.get("model", {})
    report: dict[str, Any] = {
        "index_dir": str(index_dir),
        "items": len(index),
        "model": model.get("model"),
        "code_size": index.dim,
        "machine": machine(),
        "files": {},
    }

    def record(name: str, path: Path, seconds: float) -> None:
        shrink(path)
        with Image.open(path) as image:
            size = list(image.size)
        report["files"][name] = {
            "path": str(path),
            "width": size[0],
            "height": size[1],
            "bytes": path.stat().st_size,
            "seconds": round(seconds, 2),
        }

    reporter.message("query grid ...")
    start = time.perf_counter()
    path = query_grid(index, args.out_dir / "query_grid.png", args.data_dir)
    record("query_grid", path, time.perf_counter() - start)

    runs = []
    for run in range(args.repeat):
        reporter.message(f"map run {run + 1}/{args.repeat} ...")
        load_before = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        result = figures.embedding_map(
            index, args.out_dir / "map.png", "tsne", args.sample, True, 0, reporter
        )
        runs.append(
            {
                "wall_seconds": round(time.perf_counter() - start, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),
                "tsne_seconds": round(result.project_seconds, 2),
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    record("map", args.out_dir / "map.png", runs[-1]["wall_seconds"])
    report["map"] = {
        "method": "tsne",
        "iterations": figures.TSNE_ITERATIONS,
        "points": args.sample,
        "runs": runs,
        **{
            f"median_{key}": round(statistics.median(r[key] for r in runs), 2)
            for key in ("wall_seconds", "cpu_seconds", "tsne_seconds")
        },
    }

    reporter.message("reconstructions ...")
    start = time.perf_counter()
    recon = figures.reconstruct(index, args.out_dir / "reconstruction.png", 10, True, 0, reporter)
    record("reconstruction", recon.path, time.perf_counter() - start)
    report["reconstruction_mse"] = {
        f"{row.name} ({row.detail})": round(row.mse, 5) for row in recon.rows if row.mse is not None
    }

    if "history.json" in index.extra_files:
        history_file = index.model_file("history.json")
        start = time.perf_counter()
        history = json.loads(history_file.read_text())
        path = figures.training_curve(
            history,
            args.out_dir / "training_curve.png",
            loss_name=figures.loss_label(str(model.get("loss"))),
            title=f"{model.get('model')} autoencoder, {index.dim}-d code: loss per epoch",
        )
        record("training_curve", path, time.perf_counter() - start)
    else:
        report["training_curve"] = "skipped: the index has no history.json (a PCA model)"
    print(json.dumps(report))


def query_grid(index: SearchIndex, out: Path, data_dir: str | None) -> Path:
    """Query with the first test item of each of QUERY_CLASSES; the first as a photo-like JPEG."""
    from simsearch.images import preprocess

    test = load_split("test", data_dir)
    names = index.label_names
    rows = []
    with tempfile.TemporaryDirectory(prefix="simsearch-figures-") as tmp:
        for number, label in enumerate(QUERY_CLASSES):
            i = int(np.flatnonzero(test.labels == label)[0])
            if number == 0:  # what a shop photo looks like: dark garment on white, larger
                path = Path(tmp) / f"test-{i:05d}.jpg"
                photo = Image.fromarray(255 - test.images[i]).resize(
                    (280, 280), Image.Resampling.BICUBIC
                )
                ImageOps.expand(photo, border=60, fill=255).convert("RGB").save(path, quality=90)
            else:
                path = Path(tmp) / f"test-{i:05d}.png"
                Image.fromarray(test.images[i]).save(path)
            pixels = preprocess(path)
            hits = index.query_pixels(pixels[None], QUERY_K)[0]
            label_name = names[label] if label < len(names) else None
            rows.append(figures.query_row(index, path.name, path, pixels, hits, label_name))
        return figures.query_grid(rows, out)


def shrink(path: Path) -> None:
    """Re-save a PNG with a 256-colour palette (a third of the bytes, no visible change)."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "note": "2-core, 24 GiB, no GPU machine shared with other jobs: see load_average_1min",
    }


if __name__ == "__main__":
    sys.exit(main())
