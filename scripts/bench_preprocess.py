"""How long does preprocessing a large phone photo take, next to Pillow decoding it?

    python scripts/bench_preprocess.py [--size 4000x3000] [--photos 3] [--repeat 15] [--seed 0]

Renders ``--photos`` product photos of catalog-like items (a textured item about half the
frame high, on a light background with uneven light, sensor noise, JPEG quality 90), then times,
interleaved in one run, Pillow's full decode of each file (``Image.open(...).load()``) and
``simsearch.images.preprocess`` of the same bytes (decode, EXIF, analysis, crop, 28x28 output)
and ``simsearch.images.preprocess_views`` (the same and the other framings a query searches).
Prints one JSON object with the medians in milliseconds. No index is needed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from simsearch.images import preprocess, preprocess_views


def photo(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A JPEG: a dark, textured garment-like shape on a light, unevenly lit, noisy background."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 - 0.25 * (xx / width) * rng.uniform(0.5, 1.0)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.45, 0.55)
    half_w, half_h = width * rng.uniform(0.12, 0.2), height * rng.uniform(0.22, 0.3)
    body = (np.abs(xx - cx) < half_w) & (np.abs(yy - cy) < half_h)
    sleeves = (np.abs(yy - (cy - half_h * 0.6)) < half_h * 0.25) & (np.abs(xx - cx) < half_w * 1.7)
    item = body | sleeves
    texture = 0.25 + 0.1 * np.sin(xx / 9.0) * np.sin(yy / 7.0)
    reflectance = np.where(item, texture, 0.95).astype(np.float32)
    image = reflectance * light * 255.0
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([rgb, rgb, rgb]), "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(args.seed)
    photos = [photo(width, height, rng) for _ in range(args.photos)]

    def decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    for data in photos:  # warm up: plugin imports, first-call allocations
        decode(data)
        preprocess(data)
    runs = (
        ("pillow_full_decode", decode),
        ("preprocess", preprocess),
        ("preprocess_views", preprocess_views),
    )
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(args.repeat):
        for data in photos:
            for name, run in runs:
                start = time.perf_counter()
                run(data)
                times[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: round(statistics.median(values), 1) for name, values in times.items()}
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                },
                "photo": {"size": f"{width}x{height}", "count": args.photos, "quality": 90},
                "bytes": [len(p) for p in photos],
                "repeat": args.repeat,
                "median_ms": medians,
                "preprocess_over_decode": round(
                    medians["preprocess"] / medians["pillow_full_decode"], 3
                ),
                "views": len(preprocess_views(photos[0]).names),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
