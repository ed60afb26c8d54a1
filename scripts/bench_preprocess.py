"""How long does preprocessing a large phone photo take, next to Pillow decoding it?

    python scripts/bench_preprocess.py [--size 4000x3000] [--photos 3] [--repeat 15] [--seed 0]

Renders ``--photos`` product photos of a catalog-like item (a textured item about half the
frame high, on a light background with uneven light) of two kinds: "grey" (a neutral background,
sensor noise sigma 3, JPEG quality 90) and "colour" (a tinted, patterned floor, colour noise
sigma 6, JPEG quality 95: more detail per pixel, as a phone's photo has, so a longer decode).
Then times, interleaved in one run, Pillow's full decode of each file
(``Image.open(...).load()``) and ``simsearch.images.preprocess`` of the same bytes (decode, EXIF,
analysis, crop, 28x28 output) and ``simsearch.images.preprocess_views`` (the same and the other
framings a query searches). Prints one JSON object with the medians in milliseconds per kind.
No index is needed.
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

KINDS = {"grey": (3.0, 90), "colour": (6.0, 95)}  # sensor noise sigma, JPEG quality


def photo(width: int, height: int, rng: np.random.Generator, kind: str = "grey") -> bytes:
    """A JPEG: a dark, textured garment-like shape on a light, unevenly lit, noisy background
    (see KINDS; "colour": a cream floor with a woven pattern, noise in each channel)."""
    sigma, quality = KINDS[kind]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 - 0.25 * (xx / width) * rng.uniform(0.5, 1.0)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.45, 0.55)
    half_w, half_h = width * rng.uniform(0.12, 0.2), height * rng.uniform(0.22, 0.3)
    body = (np.abs(xx - cx) < half_w) & (np.abs(yy - cy) < half_h)
    sleeves = (np.abs(yy - (cy - half_h * 0.6)) < half_h * 0.25) & (np.abs(xx - cx) < half_w * 1.7)
    item = body | sleeves
    texture = 0.25 + 0.1 * np.sin(xx / 9.0) * np.sin(yy / 7.0)
    if kind == "grey":
        reflectance = np.where(item, texture, 0.95).astype(np.float32)
        image = reflectance * light * 255.0
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
        image = np.repeat(image[:, :, None], 3, axis=2)
    else:
        floor = 0.85 + 0.05 * np.sin(xx / 23.0 + 3.0 * np.sin(yy / 41.0))
        reflectance = np.where(item, texture, floor).astype(np.float32)
        tint = np.array([1.0, 0.97, 0.92], np.float32)
        image = (reflectance * light)[:, :, None] * tint * 255.0
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=quality)
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
    photos = {kind: [photo(width, height, rng, kind) for _ in range(args.photos)] for kind in KINDS}

    def decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    for data in photos["grey"]:  # warm up: plugin imports, first-call allocations
        decode(data)
        preprocess(data)
    runs = (
        ("pillow_full_decode", decode),
        ("preprocess", preprocess),
        ("preprocess_views", preprocess_views),
    )
    times: dict[str, dict[str, list[float]]] = {k: {name: [] for name, _ in runs} for k in KINDS}
    for _ in range(args.repeat):
        for kind, kind_photos in photos.items():
            for data in kind_photos:
                for name, run in runs:
                    start = time.perf_counter()
                    run(data)
                    times[kind][name].append((time.perf_counter() - start) * 1000.0)
    medians = {
        kind: {name: round(statistics.median(values), 1) for name, values in runs_.items()}
        for kind, runs_ in times.items()
    }
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                },
                "photo": {
                    "size": f"{width}x{height}",
                    "count": args.photos,
                    "kinds": {k: {"noise": n, "quality": q} for k, (n, q) in KINDS.items()},
                },
                "bytes": {kind: [len(p) for p in ps] for kind, ps in photos.items()},
                "repeat": args.repeat,
                "median_ms": medians,
                "preprocess_over_decode": {
                    kind: round(m["preprocess"] / m["pillow_full_decode"], 3)
                    for kind, m in medians.items()
                },
                "views": {kind: len(preprocess_views(ps[0]).names) for kind, ps in photos.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
