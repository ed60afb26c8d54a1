"""Does a catalog item "re-photographed" as a product shot still find itself?

    python scripts/bench_robustness.py [--index-dir indexes/fashion-mnist] [--sample 500] [--seed 0]

Takes a random sample of catalog items, applies each transformation alone and all of them
combined, queries through the library (``SearchIndex.query_batch`` on encoded image bytes, so
decoding and preprocessing are included), and prints one JSON object with, per transformation,
the rate of finding the item itself at rank 1 and in the top 10, and the same-class P@10.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from simsearch import SearchIndex

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def enlarge(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """x10 with bicubic resampling (280x280)."""
    return image.resize((280, 280), Image.Resampling.BICUBIC)


def colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Grayscale -> a random RGB tint (the object keeps its shape, gains a colour)."""
    tint = tuple(int(v) for v in rng.integers(80, 256, size=3))
    return ImageOps.colorize(image, black=(0, 0, 0), white=tint)  # type: ignore[arg-type]


def dark_on_white(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Negated: a dark object on a white background, like a product photo."""
    return ImageOps.invert(image.convert("RGB"))


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Saved as JPEG at quality 85 (decoded again by the query)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue()))


def margins_off_centre(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pasted at a random spot of a canvas 3x as large, in the background colour."""
    w, h = image.size
    background = image.getpixel((0, 0))
    canvas = Image.new(image.mode, (3 * w, 3 * h), background)
    canvas.paste(image, (int(rng.integers(0, 2 * w + 1)), int(rng.integers(0, 2 * h + 1))))
    return canvas


def combined(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Enlarged, coloured, dark on white, with margins off centre, saved as JPEG."""
    out = enlarge(image, rng)
    out = colour(out, rng)
    out = ImageOps.invert(out)  # dark on white, keeping the tint's complement
    out = margins_off_centre(out, rng)
    return jpeg(out, rng)


TRANSFORMS: dict[str, Transform] = {
    "identity_png": lambda image, rng: image,
    "enlarge_x10": enlarge,
    "colour": colour,
    "dark_on_white": dark_on_white,
    "jpeg_q85": jpeg,
    "margins_off_centre": margins_off_centre,
    "combined": combined,
}


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    fmt = "JPEG" if image.format == "JPEG" else "PNG"
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--index-dir", default=os.environ.get("SIMSEARCH_INDEX_DIR", "indexes/fashion-mnist")
    )
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    index = SearchIndex.load(args.index_dir)
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(index), size=min(args.sample, len(index)), replace=False)
    results = {}
    for name, transform in TRANSFORMS.items():
        start = time.perf_counter()
        queries = []
        for row in rows:
            original = Image.fromarray(np.asarray(index.images[row]), mode="L")
            queries.append(encode(transform(original, rng)))
        hits = index.query_batch(queries, k=10)
        self_rank1 = np.mean([h[0].id == index.ids[r] for h, r in zip(hits, rows, strict=True)])
        self_top10 = np.mean(
            [any(x.id == index.ids[r] for x in h) for h, r in zip(hits, rows, strict=True)]
        )
        same_class = np.mean(
            [
                np.mean([x.label == index.label_of(int(r)) for x in h])
                for h, r in zip(hits, rows, strict=True)
            ]
        )
        results[name] = {
            "self_rank1": round(float(self_rank1), 4),
            "self_top10": round(float(self_top10), 4),
            "same_class_P@10": round(float(same_class), 4),
            "seconds": round(time.perf_counter() - start, 2),
        }
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "index": {
                    "dir": str(args.index_dir),
                    "count": len(index),
                    "model": index.manifest["model"].get("model"),
                    "dim": index.dim,
                },
                "sample": len(rows),
                "seed": args.seed,
                "transforms": {name: (fn.__doc__ or "").strip() for name, fn in TRANSFORMS.items()},
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
