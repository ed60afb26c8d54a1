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
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from simsearch import Hit, SearchIndex
from simsearch.errors import InvalidImageError

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


# --- real photos ---------------------------------------------------------------------------------
# A catalog item photographed: its Fashion-MNIST intensity v (0..1) is the item's darkness; the
# item covers the background with coverage alpha = min(1, v / _COVER) and reflects 1 - v (so on a
# white background the photo is exactly the negated item). The scene is reflectance times
# illumination, then optics (blur), sensor (Poisson-Gaussian noise) and JPEG. Every parameter is
# drawn at random per image from the ranges below.
_COVER = 0.1
_PHOTO_FILTERS = (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS, Image.Resampling.BILINEAR)
Scene = dict[str, Any]


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return a
    sig = (sigma, sigma, 0) if a.ndim == 3 else sigma
    return gaussian_filter(a, sig, mode="nearest")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale`` px large."""
    f = _gauss(rng.standard_normal((h, w)).astype(np.float32), scale)
    return (f - f.mean()) / (f.std() + 1e-6)


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A light procedural background reflectance (h, w, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.82, 0.96) * np.array(
        [1.0, rng.uniform(0.93, 1.0), rng.uniform(0.82, 1.0)], np.float32
    )
    if kind == "fabric":  # a weave: warp and weft threads crossing over and under
        period = rng.uniform(3.0, 8.0)
        theta = np.deg2rad(rng.uniform(-20, 20))
        u = (xx * np.cos(theta) + yy * np.sin(theta)) / period
        v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
        over = (np.floor(u) + np.floor(v)) % 2
        thread = np.where(over > 0, np.sin(np.pi * (u % 1.0)), np.sin(np.pi * (v % 1.0)))
        pattern = 0.6 * thread + 0.4 * _smooth_noise(rng, h, w, 1.0) * 0.5
        amp = rng.uniform(0.03, 0.08)
    elif kind == "wood":  # growth rings, distorted by a slow random field
        cx, cy = rng.uniform(-2 * w, 3 * w), rng.uniform(-2 * h, -h)
        stretch = rng.uniform(3.0, 8.0)
        r = np.hypot((xx - cx) / stretch, yy - cy) + 6.0 * _smooth_noise(rng, h, w, 25.0)
        period = rng.uniform(8.0, 20.0)
        pattern = np.sin(2 * np.pi * r / period) ** 2 * 2 - 1
        pattern = pattern + 0.3 * _smooth_noise(rng, h, w, 1.5)
        amp = rng.uniform(0.04, 0.10)
        base = base * np.array([1.0, 0.86, 0.68], np.float32)  # warm, light oak
    else:  # carpet: dense fibres with slow mottling
        pattern = 0.8 * _smooth_noise(rng, h, w, rng.uniform(0.6, 1.2))
        pattern = pattern + 0.5 * _smooth_noise(rng, h, w, 12.0)
        amp = rng.uniform(0.03, 0.08)
    return np.clip(base[None, None, :] * (1.0 + amp * pattern[:, :, None]), 0.0, 1.0)


def _item_layer(item: np.ndarray, height: int, tilt: float, rng: np.random.Generator) -> np.ndarray:
    """The item enlarged to ``height`` px (random resampling filter), rotated by ``tilt``
    degrees (counter-clockwise) -> darkness v in [0, 1], (h, w)."""
    filt = _PHOTO_FILTERS[int(rng.integers(len(_PHOTO_FILTERS)))]
    up = Image.fromarray(item, "L").resize((height, height), filt)
    if tilt:
        up = up.rotate(tilt, Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    return np.asarray(up, np.float32) / 255.0


def render_photo(item: np.ndarray, p: Scene, rng: np.random.Generator) -> bytes:
    """A 28x28 catalog item -> an encoded photo of it, as the scene ``p`` says (see SCENES)."""
    v = _item_layer(item, p["height"], p.get("tilt", 0.0), rng)
    ih, iw = v.shape
    W, H = max(p["canvas"][0], iw + 4), max(p["canvas"][1], ih + 4)
    if p.get("centre", True):  # near the centre, as a product shot is framed
        x0 = int(np.clip((W - iw) // 2 + rng.integers(-20, 21), 2, W - iw - 2))
        y0 = int(np.clip((H - ih) // 2 + rng.integers(-10, 11), 2, H - ih - 2))
    else:
        x0, y0 = int(rng.integers(2, W - iw - 1)), int(rng.integers(2, H - ih - 1))
    full = np.zeros((H, W), np.float32)
    full[y0 : y0 + ih, x0 : x0 + iw] = v
    alpha = np.minimum(1.0, full / _COVER)[:, :, None]
    darkness = np.maximum(full, _COVER)[:, :, None] * np.asarray(p.get("ink", (1.0, 1.0, 1.0)))
    item_refl = 1.0 - darkness

    if p.get("cutout"):  # RGBA product cut-out: the item alone, transparent around it
        light = p["cutout"] == "light"  # catalog polarity: the item's light on nothing
        # (the light item's fringe keeps its colour: over black it composites to exactly v)
        rgb = np.maximum(full, _COVER)[:, :, None] * np.ones(3, np.float32) if light else item_refl
        hidden = np.asarray(p.get("hidden", (0, 0, 0)), np.float32)
        rgb = np.where(alpha > 0, rgb * 255.0, hidden)
        rgba = np.dstack([np.clip(np.rint(rgb), 0, 255), np.rint(alpha[:, :, 0] * 255)])
        buffer = io.BytesIO()
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buffer, format="PNG")
        return buffer.getvalue()

    bg = p.get("background", (1.0, 1.0, 1.0))
    if isinstance(bg, str):
        refl_bg = _texture(bg, rng, H, W)
    else:
        refl_bg = np.ones((H, W, 3), np.float32) * np.asarray(bg, np.float32)
    if p.get("shadow"):  # soft cast shadow of the item on the floor behind/under it
        from scipy.ndimage import map_coordinates

        strength, blur, squash, dx, dy, *slant = p["shadow"]
        shear = slant[0] if slant else 0.0
        sil = np.minimum(1.0, full / _COVER)
        base_row = y0 + ih - 1
        nz = np.flatnonzero(sil.any(axis=1))
        if len(nz):
            base_row = int(nz[-1])
        # the silhouette flattened onto its base line (a light high in front of the item), and
        # slanted sideways the higher it reaches (a light to one side)
        yy = np.arange(H, dtype=np.float32)
        rise = base_row - (yy - dy)
        src = base_row - rise / (squash if abs(squash) >= 1e-3 else 1e-3)  # < 0: mirrored
        gy, gx = np.meshgrid(src, np.arange(W, dtype=np.float32) - dx, indexing="ij")
        gx = gx - shear * rise[:, None]
        cast = map_coordinates(sil, [gy, gx], order=1, mode="constant", cval=0.0)
        cast = np.clip(_gauss(cast.astype(np.float32), blur), 0.0, 1.0)
        refl_bg = refl_bg * (1.0 - strength * cast)[:, :, None]
    if p.get("clutter"):
        refl_bg = _clutter(refl_bg, full > 0.02, p["clutter"], rng)
    if p.get("through"):  # a thin fabric: its faint parts let the floor (and a shadow) through
        alpha, item_refl = full[:, :, None], 1.0 - np.asarray(p.get("ink", (1.0, 1.0, 1.0)))
    scene = alpha * item_refl + (1.0 - alpha) * refl_bg

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    light = np.ones((H, W), np.float32) * p.get("exposure", 1.0)
    if p.get("gradient"):  # a lamp or window to one side: a linear fall-off
        g, angle = p["gradient"]
        d = (xx / W - 0.5) * np.cos(angle) + (yy / H - 0.5) * np.sin(angle)
        light *= 1.0 - g * (d - d.min()) / (d.max() - d.min() + 1e-6)
    if p.get("vignette"):
        r2 = ((xx / W - 0.5) ** 2 + (yy / H - 0.5) ** 2) / 0.5
        light *= 1.0 - p["vignette"] * r2
    img = scene * light[:, :, None] * np.asarray(p.get("white_balance", (1.0, 1.0, 1.0)))
    img = _gauss(img.astype(np.float32), p.get("blur", 0.0)) * 255.0
    sigma = p.get("noise", 0.0)
    if sigma:  # Poisson-Gaussian: the variance grows with the signal; sigma at mid grey
        var = sigma**2 * (0.7 + 0.3 * np.clip(img, 0, 255) / 128.0)
        img = img + rng.standard_normal(img.shape).astype(np.float32) * np.sqrt(var)
    out = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(p.get("quality", 80)))
    return buffer.getvalue()


def _clutter(
    refl: np.ndarray, item: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Objects cut by the image's edges (a cable, a box, a shoe's tip), away from the item."""
    from scipy.ndimage import binary_dilation

    H, W = item.shape
    keep_out = binary_dilation(item, iterations=12)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = refl.copy()
    for _ in range(count):
        side = int(rng.integers(4))
        size = rng.uniform(0.08, 0.25) * min(H, W)
        along = rng.uniform(0.1, 0.9)
        cx, cy = [(along * W, 0), (along * W, H), (0, along * H), (W, along * H)][side]
        a, b = size * rng.uniform(0.5, 1.5), size * rng.uniform(0.3, 1.0)
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        w = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        blob = ((u / a) ** 2 + (w / b) ** 2) <= 1.0
        blob &= ~keep_out
        colour = rng.uniform(0.1, 0.8, size=3).astype(np.float32)
        out[blob] = colour
    return out


def _shot(rng: np.random.Generator) -> Scene:
    """The product shot the others start from: the item dark on white, about 224 px tall, on a
    420x320 canvas near its centre, JPEG 80."""
    return {"height": int(rng.integers(200, 241)), "canvas": (420, 320), "quality": 80}


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi) * rng.choice([-1.0, 1.0]))


def _shadow(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.45) -> tuple:
    """(strength, blur px, squash, dx, dy): a soft floor shadow under and beside the item."""
    return (
        float(rng.uniform(lo, hi)),
        float(rng.uniform(4.0, 14.0)),
        float(rng.uniform(0.12, 0.45)),
        float(rng.uniform(-40, 40)),
        float(rng.uniform(-4, 10)),
    )


def _contact_shadow(rng: np.random.Generator) -> tuple:
    """(strength, blur px, squash, dx, dy): a light above the item: the band of shadow under its
    base, its outline flattened and mirrored below it."""
    return (
        float(rng.uniform(0.2, 0.4)),
        float(rng.uniform(3.0, 7.0)),
        -float(rng.uniform(0.08, 0.2)),
        float(rng.uniform(-4, 4)),
        float(rng.uniform(0, 4)),
    )


def _cast_shadow(rng: np.random.Generator) -> tuple:
    """(strength, blur px, squash, dx, dy, shear): the shadow of a lamp beside the item, either
    its whole outline moved sideways and down, or flattened behind it and slanted."""
    strength, blur = float(rng.uniform(0.15, 0.4)), float(rng.uniform(4.0, 12.0))
    if rng.random() < 0.5:
        side = float(rng.choice([-1.0, 1.0]))
        return strength, blur, 1.0, side * float(rng.uniform(8, 25)), float(rng.uniform(6, 22)), 0.0
    shear = _signed(rng, 0.4, 1.2)
    return strength, blur, float(rng.uniform(0.3, 0.7)), 0.0, float(rng.uniform(0, 4)), shear


def _gradient(rng: np.random.Generator) -> tuple:
    return (float(rng.uniform(0.12, 0.35)), float(rng.uniform(0, 2 * np.pi)))


def _frame(rng: np.random.Generator) -> Scene:
    """A small item (12-30 % of the height) anywhere in a large cream or grey phone frame,
    slightly tilted."""
    fw = int(rng.integers(900, 1700))
    fh = int(fw * rng.choice([0.75, 0.5625, 1.333]))
    colour = (0.95, 0.92, 0.83) if rng.random() < 0.5 else (0.86, 0.86, 0.85)
    colour = np.clip(np.asarray(colour) + rng.uniform(-0.03, 0.03, size=3), 0.0, 1.0)
    return {
        "height": int(rng.uniform(0.12, 0.30) * min(fw, fh)),
        "canvas": (fw, fh),
        "centre": False,
        "background": tuple(float(c) for c in colour),
        "tilt": _signed(rng, 0.0, 3.0),
        "quality": int(rng.integers(75, 93)),
    }


def _combined(rng: np.random.Generator, extra: bool) -> Scene:
    """Every real-photo property at a random strength (with ``extra``: textures, clutter and
    blur too)."""
    p = _frame(rng) if rng.random() < 0.35 else _shot(rng)
    p["tilt"] = _signed(rng, 0.0, 6.0)
    p["noise"] = float(rng.uniform(0.0, 8.0))
    p["gradient"] = _gradient(rng)
    p["vignette"] = float(rng.uniform(0.0, 0.25))
    p["exposure"] = float(rng.uniform(0.85, 1.0))
    if rng.random() < 0.6:
        p["shadow"] = _shadow(rng)
    p["quality"] = int(rng.integers(70, 95))
    p["white_balance"] = tuple(float(c) for c in rng.uniform(0.93, 1.0, size=3))
    if extra:
        p["blur"] = float(rng.uniform(0.0, 1.5))
        if rng.random() < 0.5:
            p["background"] = str(rng.choice(["fabric", "wood", "carpet"]))
        if rng.random() < 0.5:
            p["clutter"] = int(rng.integers(1, 3))
    return p


def _with(**changes: Any) -> Callable[[np.random.Generator], Scene]:
    def draw(rng: np.random.Generator) -> Scene:
        p = _shot(rng)
        p.update({k: (f(rng) if callable(f) else f) for k, f in changes.items()})
        return p

    return draw


SCENES: dict[str, tuple[str, Callable[[np.random.Generator], Scene]]] = {
    "photo": ("product shot: item ~224 px dark on white, 420x320, JPEG 80", _with()),
    "photo_noise_2": ("+ sensor noise sigma 2 (Gaussian + Poisson)", _with(noise=2.0)),
    "photo_noise_3": ("+ sensor noise sigma 3", _with(noise=3.0)),
    "photo_noise_5": ("+ sensor noise sigma 5", _with(noise=5.0)),
    "photo_noise_8": ("+ sensor noise sigma 8", _with(noise=8.0)),
    "photo_uneven_light": (
        "+ light falling off 12-35 % across the frame, vignetting up to 20 %",
        _with(gradient=_gradient, vignette=lambda r: float(r.uniform(0.0, 0.2))),
    ),
    "photo_floor_shadow": (
        "+ a soft floor shadow (15-45 % darker, blur 4-14 px) under and beside the item",
        _with(shadow=_shadow),
    ),
    "photo_contact_shadow": (
        "+ a light above: the band of shadow under the item's base (its outline flattened to "
        "8-20 % and mirrored, 0-4 px under it; 20-40 % darker, blur 3-7 px)",
        _with(shadow=_contact_shadow),
    ),
    "photo_cast_shadow": (
        "+ a lamp's shadow: the outline moved 8-25 px sideways and 6-22 px down, or flattened "
        "behind the item to 30-70 % and slanted (shear 0.4-1.2); 15-40 % darker, blur 4-12 px; "
        "in half of them the item's faint parts let it through",
        _with(shadow=_cast_shadow, through=lambda r: bool(r.random() < 0.5)),
    ),
    "photo_tilt_3": ("+ tilted 1-3 degrees", _with(tilt=lambda r: _signed(r, 1.0, 3.0))),
    "photo_tilt_6": ("+ tilted 4-6 degrees", _with(tilt=lambda r: _signed(r, 4.0, 6.0))),
    "photo_blur": ("+ defocus blur sigma 1-2.5 px", _with(blur=lambda r: float(r.uniform(1, 2.5)))),
    "photo_small_in_frame": (
        "small item (12-30 % of the height) in a large cream/grey frame, tilt <= 3 deg",
        _frame,
    ),
    "photo_cutout_dark": (
        "RGBA cut-out: the item dark, transparent around it",
        _with(cutout="dark", hidden=lambda r: tuple(int(c) for c in r.choice([0, 255], size=3))),
    ),
    "photo_cutout_light": (
        "RGBA cut-out: the item light (catalog polarity), transparent around it",
        _with(cutout="light", hidden=lambda r: tuple(int(c) for c in r.choice([0, 255], size=3))),
    ),
    "photo_fabric": ("on a woven fabric background", _with(background="fabric")),
    "photo_wood": ("on a wood-grain background", _with(background="wood")),
    "photo_carpet": ("on a carpet background", _with(background="carpet")),
    "photo_clutter": (
        "other objects cut by the frame's edges",
        _with(clutter=lambda r: int(r.integers(1, 4))),
    ),
    "photo_combined": (
        "noise <= 8, uneven light, shadow (60 %), tilt <= 6, small in a frame (35 %), JPEG 70-95",
        lambda r: _combined(r, extra=False),
    ),
    "photo_combined_all": (
        "photo_combined + blur, textured backgrounds and edge clutter (50 % each)",
        lambda r: _combined(r, extra=True),
    ),
}


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    fmt = "JPEG" if image.format == "JPEG" else "PNG"
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def _query(index: SearchIndex, queries: list[bytes]) -> list[list[Hit]]:
    """Top 10 per query; an image the pipeline refuses (InvalidImageError) finds nothing."""
    try:
        return index.query_batch(queries, k=10)
    except InvalidImageError:
        pass
    hits: list[list[Hit]] = []
    for query in queries:
        try:
            hits.append(index.query(query, k=10))
        except InvalidImageError:
            hits.append([])
    return hits


def _scores(index: SearchIndex, hits: list[list[Hit]], rows: np.ndarray) -> dict[str, float]:
    pairs = list(zip(hits, rows, strict=True))
    return {
        "failed": sum(not h for h, _ in pairs),
        "self_rank1": round(
            float(np.mean([bool(h) and h[0].id == index.ids[r] for h, r in pairs])), 4
        ),
        "self_top10": round(
            float(np.mean([any(x.id == index.ids[r] for x in h) for h, r in pairs])), 4
        ),
        "same_class_P@10": round(
            float(
                np.mean(
                    [
                        np.mean([x.label == index.label_of(int(r)) for x in h]) if h else 0.0
                        for h, r in pairs
                    ]
                )
            ),
            4,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--index-dir", default=os.environ.get("SIMSEARCH_INDEX_DIR", "indexes/fashion-mnist")
    )
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", default="", help="comma-separated families (default: all); a trailing * matches"
    )
    parser.add_argument("--save-dir", help="also write every query image into this folder")
    args = parser.parse_args()
    wanted = [w for w in args.only.split(",") if w]

    def chosen(name: str) -> bool:
        return not wanted or any(
            name == w or (w.endswith("*") and name.startswith(w[:-1])) for w in wanted
        )

    index = SearchIndex.load(args.index_dir)
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(index), size=min(args.sample, len(index)), replace=False)
    save_dir = Path(args.save_dir) if args.save_dir else None
    results = {}
    families: dict[str, str] = {}
    # The clean transformations draw from one stream, in order (their figures stay comparable
    # from run to run); each photo family has its own stream, so --only does not change it.
    for name, transform in TRANSFORMS.items():
        start = time.perf_counter()
        queries = []
        for row in rows:
            original = Image.fromarray(np.asarray(index.images[row]), mode="L")
            queries.append(encode(transform(original, rng)))
        if not chosen(name):
            continue
        families[name] = (transform.__doc__ or "").strip()
        hits = _query(index, queries)
        results[name] = _scores(index, hits, rows) | {
            "seconds": round(time.perf_counter() - start, 2)
        }
    for name, (doc, draw) in SCENES.items():
        if not chosen(name):
            continue
        start = time.perf_counter()
        scene_rng = np.random.default_rng([args.seed, zlib.crc32(name.encode())])
        queries = [
            render_photo(np.asarray(index.images[row]), draw(scene_rng), scene_rng) for row in rows
        ]
        if save_dir is not None:
            (save_dir / name).mkdir(parents=True, exist_ok=True)
            for row, data in zip(rows, queries, strict=True):
                ext = "png" if data.startswith(b"\x89PNG") else "jpg"
                (save_dir / name / f"{row:05d}.{ext}").write_bytes(data)
        families[name] = doc
        hits = _query(index, queries)
        results[name] = _scores(index, hits, rows) | {
            "seconds": round(time.perf_counter() - start, 2)
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
                "transforms": families,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
