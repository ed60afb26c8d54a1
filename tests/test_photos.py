"""Real-photo preprocessing: catalog items photographed with noise, uneven light, a shadow, a
tilt, in a large frame or cut out, must come back framed as the catalog has them.

The photos are rendered here, independently of scripts/bench_robustness.py (a multiplicative
scene: background times (1 - item darkness), an elliptic floor shadow), from real Fashion-MNIST
test items. An item "comes back" when raw-pixel nearest-neighbour search over 1,000 catalog items
finds it at rank 1: no model is needed, the framing alone decides.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from simsearch import regions
from simsearch.cli import app
from simsearch.figures.explain import ExplainRow, draw_explain, explain_size
from simsearch.images import SIZE, explain, preprocess

FMNIST_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
QUERIES = 40  # items photographed per condition (every 25th of the 1,000)


@pytest.fixture(scope="module")
def catalog() -> np.ndarray:
    """The first 1,000 Fashion-MNIST test items, (1000, 28, 28) uint8."""
    if not FMNIST_TEST.exists():
        pytest.skip(f"{FMNIST_TEST} not installed")
    with gzip.open(FMNIST_TEST, "rb") as f:
        magic, _count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x00000803 and (rows, cols) == (28, 28)
        return np.frombuffer(f.read(1000 * 784), np.uint8).reshape(-1, 28, 28)


def _rank1(catalog: np.ndarray, outputs: list[np.ndarray], rows: list[int]) -> float:
    """Share of outputs whose raw-pixel cosine nearest neighbour is their own item."""
    cat = catalog.reshape(len(catalog), -1).astype(np.float64)
    cat /= np.linalg.norm(cat, axis=1, keepdims=True)
    q = np.stack(outputs).reshape(len(outputs), -1).astype(np.float64)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-9)
    return float(np.mean(np.argmax(q @ cat.T, axis=1) == np.asarray(rows)))


def _photo(
    item: np.ndarray,
    rng: np.random.Generator,
    *,
    noise: float = 0.0,
    light: float = 0.0,
    shadow: float = 0.0,
    tilt: float = 0.0,
    frame: bool = False,
    quality: int = 88,
) -> bytes:
    """A JPEG photo of ``item``: dark on a light background, ~220 px on 420x320 (or ~130 px
    anywhere on a 1200x900 cream frame), light falling off by ``light`` across it, an elliptic
    floor shadow of strength ``shadow``, tilted ``tilt`` degrees, Gaussian noise ``noise``."""
    size = int(rng.integers(120, 150)) if frame else int(rng.integers(205, 235))
    up = Image.fromarray(item, "L").resize((size, size), Image.Resampling.BICUBIC)
    if tilt:
        up = up.rotate(tilt, Image.Resampling.BICUBIC, expand=True)
    v = np.asarray(up, np.float32) / 255.0
    width, height = (1200, 900) if frame else (420, 320)
    x0 = int(rng.integers(5, width - v.shape[1] - 5))
    y0 = int(rng.integers(5, height - v.shape[0] - 25))
    if not frame:
        x0, y0 = (width - v.shape[1]) // 2, (height - v.shape[0]) // 2 - 10
    darkness = np.zeros((height, width), np.float32)
    darkness[y0 : y0 + v.shape[0], x0 : x0 + v.shape[1]] = v
    background = np.array([0.96, 0.93, 0.85] if frame else [1.0, 1.0, 1.0], np.float32)
    scene = np.ones((height, width, 3), np.float32) * background
    if shadow:
        rows = np.flatnonzero(darkness.max(axis=1) > 0.05)
        cols = np.flatnonzero(darkness.max(axis=0) > 0.05)
        ellipse = Image.new("L", (width, height), 0)
        cx, base = (cols[0] + cols[-1]) / 2 + rng.uniform(-15, 15), rows[-1]
        half = (cols[-1] - cols[0]) * rng.uniform(0.5, 0.65)
        ImageDraw.Draw(ellipse).ellipse((cx - half, base - 12, cx + half, base + 14), fill=255)
        blurred = ellipse.filter(ImageFilter.GaussianBlur(rng.uniform(5, 9)))
        cast = shadow * np.asarray(blurred, np.float32) / 255.0
        cast *= 1.0 - np.clip(darkness / 0.1, 0.0, 1.0)  # the item hides the shadow under it
        scene *= (1.0 - cast)[:, :, None]
    scene *= (1.0 - darkness)[:, :, None]
    xx = np.arange(width, dtype=np.float32)[None, :, None]
    pixels = scene * (1.0 - light * xx / width) * 255.0
    pixels += rng.normal(0.0, noise, pixels.shape).astype(np.float32) if noise else 0.0
    buffer = io.BytesIO()
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    out.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _cutout(item: np.ndarray, rng: np.random.Generator, light: bool) -> bytes:
    """An RGBA PNG: the item (dark, or light as in the catalog) on a transparent background
    whose hidden colour would hide it."""
    up = Image.fromarray(item, "L").resize((220, 220), Image.Resampling.BICUBIC)
    v = np.asarray(up, np.float32) / 255.0
    alpha = np.clip(v / 0.15, 0.0, 1.0)
    level = np.maximum(v, 0.15) if light else 1.0 - np.maximum(v, 0.15)
    hidden = 0.0 if light else 1.0
    rgb = np.where(alpha[:, :, None] > 0, level[:, :, None], hidden) * np.ones(3)
    rgba = np.dstack([rgb * 255.0, alpha * 255.0])
    canvas = np.zeros((300, 320, 4), np.float32)
    canvas[:, :, :3] = hidden * 255.0
    y, x = int(rng.integers(5, 75)), int(rng.integers(5, 95))
    canvas[y : y + 220, x : x + 220] = rgba
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


CONDITIONS = {
    # name: (photo options, minimum raw-pixel rank-1 rate over QUERIES items)
    "clean": ({}, 0.9),
    "noise_8": ({"noise": 8.0}, 0.85),
    "uneven_light": ({"light": 0.3}, 0.9),
    "floor_shadow": ({"shadow": 0.3}, 0.7),
    "tilt_5": ({"tilt": 5.0}, 0.8),
    "tilt_minus_4": ({"tilt": -4.0}, 0.8),
    "small_in_cream_frame": ({"frame": True}, 0.9),
}


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_photographed_items_come_back(catalog: np.ndarray, condition: str) -> None:
    options, minimum = CONDITIONS[condition]
    rng = np.random.default_rng(len(condition))
    rows = list(range(0, 1000, 1000 // QUERIES))
    outputs = [preprocess(_photo(catalog[r], rng, **options)) for r in rows]  # type: ignore[arg-type]
    rate = _rank1(catalog, outputs, rows)
    assert rate >= minimum, f"{condition}: rank-1 {rate:.2f} < {minimum}"


@pytest.mark.parametrize("light", [False, True], ids=["dark-item", "light-item"])
def test_cutouts_come_back_whether_the_item_is_dark_or_light(
    catalog: np.ndarray, light: bool
) -> None:
    rng = np.random.default_rng(7)
    rows = list(range(0, 1000, 1000 // QUERIES))
    outputs = [preprocess(_cutout(catalog[r], rng, light)) for r in rows]
    assert _rank1(catalog, outputs, rows) >= 0.9


def test_tilt_is_measured_and_only_corrected_when_clear(catalog: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    rows = list(range(3, 1000, 1000 // 20))
    upright = [explain(_photo(catalog[r], rng))[1] for r in rows]
    assert sum(s is not None and s.tilt != 0.0 for s in upright) <= 2  # rarely turned by mistake
    errors = []
    for r in rows:
        steps = explain(_photo(catalog[r], rng, tilt=-5.0))[1]
        assert steps is not None
        errors.append(abs(steps.tilt - (-5.0)))
    assert float(np.median(errors)) <= 0.5 and np.mean(np.array(errors) <= 1.5) >= 0.8, errors


def test_noise_and_background_are_estimated_from_the_image(catalog: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    clean = explain(_photo(catalog[10], rng, quality=95))[1]
    noisy = explain(_photo(catalog[10], rng, noise=8.0, quality=95))[1]
    lit = explain(_photo(catalog[10], rng, light=0.3))[1]
    assert clean is not None and noisy is not None and lit is not None
    # (a white background clipped at 255 hides half the noise; sigma 8 still shows)
    assert clean.noise < 0.5 < noisy.noise
    assert clean.dark_object and noisy.dark_object
    left, right = lit.background[:, 5].mean(), lit.background[:, -5].mean()
    assert left - right > 40  # the light falls off to the right, and the fit follows it
    assert np.ptp(clean.background) <= 2  # a flat white background stays flat


def test_explain_steps_describe_the_crop(catalog: np.ndarray) -> None:
    photo = _photo(catalog[20], np.random.default_rng(9))
    pixels, steps = explain(photo)
    assert steps is not None and steps.tilt == 0.0
    assert np.array_equal(pixels, preprocess(photo))
    h, w = steps.mask.shape
    assert steps.image.shape == (h, w, 3) and steps.background.shape == (h, w, 3)
    assert steps.image.dtype == np.uint8 and steps.pixels.shape == (SIZE, SIZE)
    assert steps.box.shape == (4, 2)
    inside = steps.box.mean(axis=0)
    assert steps.mask[int(inside[1]), int(inside[0])]  # the crop's centre is on the object
    ys, xs = np.nonzero(steps.mask)
    assert xs.min() - 3 <= steps.box[:, 0].min() and steps.box[:, 0].max() <= xs.max() + 4
    assert ys.min() - 3 <= steps.box[:, 1].min() and steps.box[:, 1].max() <= ys.max() + 4
    # tilted: the crop is turned by the tilt found
    tilted = explain(_photo(catalog[20], np.random.default_rng(9), tilt=5.0))[1]
    assert tilted is not None and abs(tilted.tilt - 5.0) <= 1.0
    top = tilted.box[1] - tilted.box[0]
    assert abs(np.degrees(np.arctan2(top[1], top[0])) + tilted.tilt) < 0.1
    # a 28x28 catalog item is used as it is: nothing to explain
    item = catalog[0]
    same, none = explain(item)
    assert none is None and np.array_equal(same, item)


def test_draw_explain_writes_one_row_per_query(catalog: np.ndarray, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    rows = []
    for source in (
        _photo(catalog[30], rng, shadow=0.3),
        catalog[31],
        _cutout(catalog[32], rng, True),
    ):
        pixels, steps = explain(source)
        rows.append(ExplainRow("query", pixels, steps))
    out = draw_explain(rows, tmp_path / "explain.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == explain_size(3)
        assert np.asarray(image.convert("L")).std() > 20  # something is drawn


def test_query_explain_cli(pca_index_dir: Path, catalog: np.ndarray, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_photo(catalog[40], rng, noise=5.0, tilt=4.0))
    out = tmp_path / "explain.png"
    args = ["query", str(photo), "--index-dir", str(pca_index_dir), "-k", "3", "--explain"]
    result = CliRunner().invoke(app, [*args, str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and str(out) in result.stderr
    with Image.open(out) as image:
        assert image.size == explain_size(1)
    # a bad image among good ones: one line for it, the others answered, exit 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["query", str(photo), str(bad), *args[2:], str(out)])
    assert result.exit_code == 1
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output
    assert "query: " in result.stdout
    # an output that cannot be written fails before any work, in one line
    result = CliRunner().invoke(app, [*args, str(tmp_path / "missing" / "x.png")])
    assert result.exit_code == 1 and result.stderr.strip().count("\n") == 0


def _components(mask: np.ndarray, connectivity: int = 8) -> list[set[tuple[int, int]]]:
    """Reference connected components by flood fill."""
    seen: set[tuple[int, int]] = set()
    found = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if start in seen:
            continue
        stack, comp = [start], set()
        seen.add(start)
        while stack:
            y, x = stack.pop()
            comp.add((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if connectivity == 4 and dy and dx:
                        continue
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < h and 0 <= q[1] < w and mask[q] and q not in seen:
                        seen.add(q)
                        stack.append(q)
        found.append(comp)
    return found


def test_regions_label_fill_and_dilate_match_references() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.7)
        labels, count = regions.label(mask)
        reference = _components(mask)
        assert count == len(reference)
        for comp in reference:
            assert len({int(labels[p]) for p in comp}) == 1
        filled = regions.fill_holes(mask)
        outside = _components(~mask, connectivity=4)
        for comp in outside:
            touches = any(y in (0, h - 1) or x in (0, w - 1) for y, x in comp)
            assert all(filled[p] != touches for p in comp)
        r = int(rng.integers(0, 3))
        dilated = regions.dilate(mask, r)
        for y in range(h):
            for x in range(w):
                window = mask[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
                assert dilated[y, x] == window.any()


@pytest.mark.parametrize("how", ["enlarged_x10", "off_centre_on_black"])
def test_clean_copies_keep_the_catalog_framing(catalog: np.ndarray, how: str) -> None:
    """Catalog items enlarged, or on a wide dark canvas, come out as the catalog has them:
    a sneaker's faint sole is not a floor shadow, an item a little off vertical is not turned."""
    rng = np.random.default_rng(11)
    cosines = []
    for row in range(0, 1000, 5):
        item = Image.fromarray(catalog[row], "L")
        if how == "enlarged_x10":
            image = item.resize((280, 280), Image.Resampling.BICUBIC)
        else:
            image = Image.new("L", (84, 84), 0)
            image.paste(item, (int(rng.integers(0, 57)), int(rng.integers(0, 57))))
        out = preprocess(image).astype(np.float64).ravel()
        ref = catalog[row].astype(np.float64).ravel()
        cosines.append(float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))))
    # (resampling alone takes a few striped items to ~0.8; a wrong crop goes far lower)
    assert np.mean(cosines) >= 0.99 and min(cosines) >= 0.75, sorted(cosines)[:5]
