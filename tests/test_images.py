"""Tests of simsearch.images: loading, validation and Fashion-MNIST-style preprocessing.

Every image is generated here with Pillow (or numpy); files go to pytest's tmp_path only.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from simsearch.errors import InvalidImageError
from simsearch.images import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    load_image,
    preprocess,
    preprocess_array,
    preprocess_batch,
)

W, H = 96, 72  # canvas of the generated test images
OBJECT = (20, 10, 44, 62)  # a tall object (24 x 52 px), off centre, with wide margins
DETAIL = (26, 14, 38, 24)  # a lighter patch inside it, so the object is not a single level


def _gray(dark_on_light: bool) -> Image.Image:
    """A mode-L product shot (dark object on light) or a Fashion-MNIST-like one (light on dark)."""
    bg, obj, detail = (235, 30, 90) if dark_on_light else (10, 220, 160)
    im = Image.new("L", (W, H), bg)
    draw = ImageDraw.Draw(im)
    draw.rectangle((OBJECT[0], OBJECT[1], OBJECT[2] - 1, OBJECT[3] - 1), fill=obj)
    draw.rectangle((DETAIL[0], DETAIL[1], DETAIL[2] - 1, DETAIL[3] - 1), fill=detail)
    return im


def _object_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[OBJECT[1] : OBJECT[3], OBJECT[0] : OBJECT[2]] = True
    return m


def _make(mode: str, dark_on_light: bool) -> Image.Image:
    """The test image in a Pillow mode; "PT" is P with a transparent background index.

    Transparent backgrounds (LA, RGBA, PT) get the colour that would hide the object if
    transparency were ignored: black behind a dark object, white behind a light one.
    """
    g = _gray(dark_on_light)
    a = np.asarray(g)
    obj = _object_mask()
    hidden = 0 if dark_on_light else 255
    if mode == "1":
        return g.convert("1", dither=Image.Dither.NONE)
    if mode in ("L", "CMYK"):
        return g.convert(mode)
    if mode == "I;16":
        return Image.fromarray(a.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(a.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(a.astype(np.float32) / 255.0)
    if mode == "LA":
        lum = np.where(obj, a, hidden).astype(np.uint8)
        alpha = np.where(obj, 255, 0).astype(np.uint8)
        return Image.fromarray(np.dstack([lum, alpha]), "LA")
    tint = np.array([0.6, 0.8, 1.0]) if dark_on_light else np.array([1.0, 0.85, 0.5])
    rgb = np.clip(np.rint(a[:, :, None] * tint), 0, 255).astype(np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if mode == "P":
        return Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode == "RGBA":
        rgb = np.where(obj[:, :, None], rgb, hidden).astype(np.uint8)
        alpha = np.where(obj, 255, 0).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if mode == "PT":
        rgb = np.where(obj[:, :, None], rgb, hidden).astype(np.uint8)
        p = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        p.info["transparency"] = int(np.asarray(p)[0, 0])
        return p
    raise ValueError(mode)


def _encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    if "transparency" in im.info and fmt in ("PNG", "GIF"):
        kw.setdefault("transparency", im.info["transparency"])
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _assert_fmnist_like(out: np.ndarray) -> None:
    """A tall bright object centred on black: rows touch, side margins dark."""
    assert out.shape == (28, 28)
    assert out.dtype == np.uint8
    assert out.max() >= 200, "object should be bright"
    assert out[14, 14] >= 150, "object centre should be bright"
    assert out[20:27, 9:19].mean() >= 150, "the lower object body should be bright"
    assert out[:, :5].max() <= 40, "left margin should be near black"
    assert out[:, -5:].max() <= 40, "right margin should be near black"
    assert out[1:27, 14].min() >= 100, "the object should fill the height"


# Which mode each format can store (checked against this Pillow): every listed pair is tested.
FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["L", "RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "GIF": ["1", "L", "P", "PT"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
}
CASES = [(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]
ALL_MODES = ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
@pytest.mark.parametrize(("fmt", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_every_format_and_mode_from_path_and_bytes(
    tmp_path: Path, fmt: str, mode: str, dark_on_light: bool
) -> None:
    data = _encode(_make(mode, dark_on_light), fmt)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    from_path = preprocess(path)
    _assert_fmnist_like(from_path)
    _assert_fmnist_like(preprocess(str(path)))
    assert np.array_equal(preprocess(data), from_path)


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_mode_as_pil_image(mode: str, dark_on_light: bool) -> None:
    _assert_fmnist_like(preprocess(_make(mode, dark_on_light)))


@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
@pytest.mark.parametrize(
    "kind",
    ["gray-u8", "gray-u16", "gray-f32", "gray-f64", "hw1-u8", "rgb-u8", "rgb-f32", "rgba-u8"],
)
def test_numpy_arrays(kind: str, dark_on_light: bool) -> None:
    g = np.asarray(_gray(dark_on_light))
    rgb = np.asarray(_make("RGB", dark_on_light))
    rgba = np.asarray(_make("RGBA", dark_on_light))
    arrays = {
        "gray-u8": g,
        "gray-u16": g.astype(np.uint16) * 257,
        "gray-f32": g.astype(np.float32) / 255,
        "gray-f64": g.astype(np.float64) / 255,
        "hw1-u8": g[:, :, None],
        "rgb-u8": rgb,
        "rgb-f32": rgb.astype(np.float32) / 255,
        "rgba-u8": rgba,
    }
    _assert_fmnist_like(preprocess(arrays[kind]))


@pytest.mark.parametrize("hidden_rgb", [(255, 255, 255), (0, 0, 0)], ids=["white", "black"])
@pytest.mark.parametrize("object_level", [30, 220], ids=["dark-object", "light-object"])
def test_transparent_background_is_background_whatever_its_colour(
    hidden_rgb: tuple[int, int, int], object_level: int
) -> None:
    obj = _object_mask()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, :, :3] = hidden_rgb
    rgba[obj] = (object_level, object_level, object_level, 255)
    data = _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    _assert_fmnist_like(preprocess(data))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored wide (the tall test image rotated); Orientation 6 says: rotate 90 degrees clockwise
    # to display, which makes it tall again.
    stored = _gray(True).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=92, exif=exif.tobytes())
    assert load_image(path).size == (W, H)
    out = preprocess(path)
    assert out[:, :5].max() <= 40 and out[:, -5:].max() <= 40  # tall: margins left and right
    assert out[1:27, 14].min() >= 100
    # Without the tag the same pixels are a wide object: margins at the top and bottom.
    plain = preprocess(_encode(stored, "JPEG", quality=92))
    assert plain[:5].max() <= 40 and plain[-5:].max() <= 40


def _fmnist_like_item(seed: int = 0) -> np.ndarray:
    """A 28x28 uint8 item framed like Fashion-MNIST: bright textured body on black, bounding
    box 28 rows tall (touching top and bottom), centred with the odd pixel on the left."""
    rng = np.random.default_rng(seed)
    item = np.zeros((28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    body = (xx >= 7) & (xx <= 20)  # 14 px wide: margins 7 and 7
    sleeves = (yy <= 12) & (xx >= 4) & (xx <= 23) & (np.abs(xx - 13.5) <= 6 + yy * 0.6)
    shape = body | sleeves
    item[shape] = rng.integers(120, 256, size=int(shape.sum()))
    item[shape] = np.clip(item[shape].astype(int) + 40, 0, 255)
    item[0, 7:21] = 200  # touches the top border ...
    item[27, 7:21] = 180  # ... and the bottom border
    item[13, 13] = 255
    return item


@pytest.mark.parametrize("kind", ["png-path", "png-bytes", "pil-L", "array"])
def test_exact_28x28_grayscale_passes_through_bit_for_bit(tmp_path: Path, kind: str) -> None:
    item = _fmnist_like_item()
    assert item[0].any() and item[-1].any()  # content touches the border
    if kind == "array":
        src: object = item
    elif kind == "pil-L":
        src = Image.fromarray(item, "L")
    else:
        data = _encode(Image.fromarray(item, "L"), "PNG")
        if kind == "png-bytes":
            src = data
        else:
            src = tmp_path / "item.png"
            src.write_bytes(data)
    out = preprocess(src)  # type: ignore[arg-type]
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert np.array_equal(out, item)


def test_pass_through_does_not_need_a_black_border() -> None:
    rng = np.random.default_rng(3)
    item = rng.integers(0, 256, size=(28, 28)).astype(np.uint8)
    item[:2, :2] = item[:2, -2:] = item[-2:, :2] = item[-2:, -2:] = 0  # dark corners only
    assert np.array_equal(preprocess(item), item)


def test_negated_28x28_item_comes_back() -> None:
    item = _fmnist_like_item()
    out = preprocess(Image.fromarray(255 - item, "L"))
    assert np.abs(out.astype(int) - item).max() <= 1


def _rephotograph(item: np.ndarray, size: int, quality: int | None, seed: int = 0) -> bytes:
    """Enlarge with bicubic, tint, make dark on white, paste off centre, save (JPEG or PNG)."""
    rng = np.random.default_rng(seed)
    up = np.asarray(Image.fromarray(item, "L").resize((size, size), Image.Resampling.BICUBIC))
    colour = np.array([40.0, 70.0, 120.0])
    photo = 255.0 - up[:, :, None] / 255.0 * (255.0 - colour)
    canvas = Image.new("RGB", (size + 230, size + 170), (255, 255, 255))
    pos = (int(rng.integers(10, 200)), int(rng.integers(10, 150)))
    canvas.paste(Image.fromarray(np.rint(photo).astype(np.uint8), "RGB"), pos)
    if quality is None:
        return _encode(canvas, "PNG")
    return _encode(canvas, "JPEG", quality=quality)


@pytest.mark.parametrize(
    ("size", "quality", "max_error"), [(280, 85, 5.0), (500, 90, 5.0), (280, None, 4.5)]
)
def test_rephotographed_item_comes_back(size: int, quality: int | None, max_error: float) -> None:
    item = _fmnist_like_item()
    out = preprocess(_rephotograph(item, size, quality))
    err = np.abs(out.astype(float) - item).mean()
    assert err <= max_error, f"mean abs error {err:.2f}"


FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx_images(path: Path, n: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        head = f.read(16)
        magic, _count, rows, cols = struct.unpack(">IIII", head)
        assert magic == 0x00000803 and (rows, cols) == (28, 28)
        data = f.read(n * 784)
    return np.frombuffer(data, np.uint8).reshape(-1, 28, 28)


def test_real_fashion_mnist_items() -> None:
    path = FMNIST_DIR / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip(f"{path} not installed")
    items = _read_idx_images(path, 16)
    for item in items:
        assert np.array_equal(preprocess(item), item)
        assert np.array_equal(preprocess(_encode(Image.fromarray(item, "L"), "PNG")), item)
    errors = [
        np.abs(preprocess(_rephotograph(item, 280, None, seed=i)).astype(float) - item).mean()
        for i, item in enumerate(items)
    ]
    assert float(np.median(errors)) <= 5.0, errors


def test_small_and_gif_first_frame() -> None:
    tiny = np.zeros((8, 8), np.uint8)
    tiny[1:7, 3:5] = 255
    out = preprocess(tiny)
    assert out.shape == (28, 28) and out[14, 14] >= 200 and out[14, 0] == 0
    first = _gray(False)
    second = first.transpose(Image.Transpose.ROTATE_90).resize((W, H))
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100)
    _assert_fmnist_like(preprocess(buf.getvalue()))


def test_large_photo_is_accepted_and_fast() -> None:
    big = Image.new("RGB", (6000, 6000), (245, 245, 245))
    ImageDraw.Draw(big).rectangle((1200, 500, 3600, 5800), fill=(60, 40, 30))
    data = _encode(big, "JPEG", quality=85)
    assert MAX_IMAGE_PIXELS >= 6000 * 6000
    preprocess(data)  # warm up the plugin imports
    start = time.perf_counter()
    out = preprocess(data)
    elapsed = time.perf_counter() - start
    assert out[14, 14] >= 200 and out[14, 0] == 0
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _noisy_png() -> bytes:
    rng = np.random.default_rng(1)
    return _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")


def _noisy_jpeg() -> bytes:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return _encode(Image.fromarray(noise), "JPEG", quality=90)


def _bad_input(kind: str, tmp_path: Path) -> object:
    if kind == "missing-path":
        return tmp_path / "no-such-image.png"
    if kind == "directory":
        return tmp_path
    if kind == "empty-file":
        (tmp_path / "empty.png").write_bytes(b"")
        return tmp_path / "empty.png"
    if kind == "empty-bytes":
        return b""
    if kind == "truncated-png":
        data = _noisy_png()
        (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.png"
    if kind == "truncated-jpeg":
        data = _noisy_jpeg()
        return data[: len(data) // 2]
    if kind == "text-bytes":
        return b"this is not an image, just some text\n" * 4
    if kind == "text-file":
        (tmp_path / "notes.png").write_text("hello\n")
        return tmp_path / "notes.png"
    if kind == "bomb-header":
        return _png_claiming(100_000, 100_000)
    if kind == "bomb-just-over-limit":
        return _png_claiming(9000, 9000)
    if kind == "blank-png":
        return _encode(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")
    if kind == "blank-jpeg":
        return _encode(Image.new("RGB", (64, 48), (255, 255, 255)), "JPEG")
    if kind == "blank-28-array":
        return np.zeros((28, 28), np.uint8)
    if kind == "blank-transparent":
        return Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    if kind == "array-shape":
        return np.zeros((10, 10, 2), np.uint8)
    if kind == "array-dtype":
        return np.zeros((10, 10), np.complex64)
    if kind == "array-nan":
        return np.full((10, 10), np.nan, np.float32)
    if kind == "array-range":
        return np.full((10, 10), 1000.0, np.float32)
    if kind == "array-empty":
        return np.zeros((0, 10), np.uint8)
    raise ValueError(kind)


BAD = [
    "missing-path",
    "directory",
    "empty-file",
    "empty-bytes",
    "truncated-png",
    "truncated-jpeg",
    "text-bytes",
    "text-file",
    "bomb-header",
    "bomb-just-over-limit",
    "blank-png",
    "blank-jpeg",
    "blank-28-array",
    "blank-transparent",
    "array-shape",
    "array-dtype",
    "array-nan",
    "array-range",
    "array-empty",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_inputs_raise_one_line_invalid_image_error(tmp_path: Path, kind: str) -> None:
    src = _bad_input(kind, tmp_path)
    start = time.perf_counter()
    with pytest.raises(InvalidImageError) as info:
        preprocess(src)  # type: ignore[arg-type]
    assert time.perf_counter() - start < 2.0
    msg = str(info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    if isinstance(src, Path):
        assert str(src) in msg
    if not kind.startswith("blank"):  # load_image refuses the same inputs
        with pytest.raises(InvalidImageError):
            load_image(src)  # type: ignore[arg-type]


def test_messages_say_what_is_wrong(tmp_path: Path) -> None:
    def message(src: object) -> str:
        with pytest.raises(InvalidImageError) as info:
            preprocess(src)  # type: ignore[arg-type]
        return str(info.value).lower()

    assert "not found" in message(tmp_path / "missing.png")
    assert "directory" in message(tmp_path)
    assert "too large" in message(_png_claiming(100_000, 100_000))
    assert "blank" in message(np.full((40, 40), 128, np.uint8))
    assert "truncated" in message(_noisy_png()[:300])


def test_real_single_colour_png_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid PNG, tiny on disk, over the pixel limit (lowered here to keep the test fast)."""
    import simsearch.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 2000 * 2000)
    path = tmp_path / "bomb.png"
    Image.new("1", (2100, 2100)).save(path, "PNG")
    assert path.stat().st_size < 10_000
    with pytest.raises(InvalidImageError, match="too large") as info:
        preprocess(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert preprocess(_encode(_gray(True), "PNG")).max() == 255  # normal images still pass


def test_too_many_bytes_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import simsearch.images as images

    assert MAX_IMAGE_BYTES >= 64 * 1024 * 1024
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(InvalidImageError, match="too large"):
        preprocess(_noisy_png())


def test_load_image_returns_decoded_pil_image(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    _make("P", True).save(path)
    im = load_image(path)
    assert isinstance(im, Image.Image) and im.size == (W, H)
    assert np.asarray(im).shape == (H, W)
    arr = load_image(np.zeros((5, 7, 3), np.uint8))
    assert arr.mode == "RGB" and arr.size == (7, 5)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_preprocess_batch() -> None:
    item = _fmnist_like_item()
    out = preprocess_batch([item, _gray(True), _encode(_gray(False), "PNG")])
    assert out.shape == (3, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out[0], item)
    assert preprocess_batch([]).shape == (0, 28, 28)
    with pytest.raises(InvalidImageError, match="item 1"):
        preprocess_batch([item, b"not an image", item])


def test_preprocess_array_matches_preprocess_per_image() -> None:
    item = _fmnist_like_item()
    inverted = 255 - item  # light background: goes through the full framing
    low_contrast = (item // 8).astype(np.uint8)
    batch = np.stack([item, inverted, low_contrast, item[::-1]])
    out = preprocess_array(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    for got, image in zip(out, batch, strict=True):
        assert np.array_equal(got, preprocess(image))
    assert preprocess_array(np.zeros((0, 28, 28), np.uint8)).shape == (0, 28, 28)
    blank = np.full((28, 28), 7, np.uint8)
    with pytest.raises(InvalidImageError, match=r"item 2: .*blank"):
        preprocess_array(np.stack([item, item, blank]))


def test_import_is_cheap() -> None:
    code = (
        "import sys, simsearch.images\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'faiss', 'scipy', 'torch', 'cv2')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# --- bounded memory on large images -------------------------------------------------------------

_MEMORY_CHILD = """
import resource, sys
from PIL import Image, ImageDraw
from simsearch.images import preprocess

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

source, side = sys.argv[1], int(sys.argv[2])
if source.startswith("mode:"):  # an image already decoded: the extra is preprocess's own
    mode = source[5:]
    bg, fg = {
        "1": (1, 0), "L": (230, 40), "LA": ((230, 0), (40, 255)), "P": (0, 2),
        "PA": ((0, 0), (2, 255)), "PT": (1, 2), "RGB": ((230, 230, 230), (40, 60, 90)),
        "RGBA": ((230, 230, 230, 0), (40, 60, 90, 255)), "CMYK": ((5, 5, 5, 5), (200, 100, 50, 0)),
        "I;16": (60000, 9000), "I;16B": (60000, 9000), "I": (60000, 9000), "F": (0.9, 0.1),
    }[mode]
    im = Image.new("P" if mode == "PT" else mode, (side, side), bg)  # filled: resident
    if mode in ("P", "PA", "PT"):
        im.putpalette([250, 250, 250, 250, 250, 250, 30, 40, 50])
        if mode == "PT":
            im.info["transparency"] = 1
    ImageDraw.Draw(im).rectangle((side // 3, side // 5, 2 * side // 3, 4 * side // 5), fill=fg)
    before = peak_mb()
    out = preprocess(im)
else:  # a file: the decode is included
    before = peak_mb()
    out = preprocess(source)
print(round(peak_mb() - before, 1), int(out[14, 14]), int(out[14, 1]))
"""


def _peak_memory_children(sources: list[str], side: int) -> dict[str, tuple[float, int, int]]:
    """Run preprocess in one fresh process per source (concurrently): source -> (extra peak RSS
    in MB, centre pixel, left-margin pixel)."""
    import simsearch

    root = str(Path(simsearch.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    procs = {
        s: subprocess.Popen(
            [sys.executable, "-c", _MEMORY_CHILD, s, str(side)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for s in sources
    }
    results = {}
    for s, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        mb, centre, margin = out.split()
        results[s] = (float(mb), int(centre), int(margin))
    return results


def test_preprocess_memory_does_not_grow_with_the_image() -> None:
    """A decoded 4096x4096 image of any mode: preprocess needs a few MB beyond it, not copies of
    it (the float conversion of a 16-bit or float image used to take ~1 GB at 8192x8192)."""
    modes = ["1", "L", "LA", "P", "PA", "PT", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"]
    results = _peak_memory_children([f"mode:{m}" for m in modes], 4096)
    extra = {s[5:]: r[0] for s, r in results.items()}
    assert max(extra.values()) < 40, extra  # decoded: 16 MB (mode 1, L) to 64 MB (RGBA, I, F)
    for source, (_, centre, margin) in results.items():
        assert centre == 255 and margin == 0, (source, centre, margin)


def test_large_16_bit_png_and_float_tiff_from_file(tmp_path: Path) -> None:
    side = 4096
    values = np.full((side, side), 60000, np.uint16)
    values[side // 5 : 4 * side // 5, side // 3 : 2 * side // 3] = 9000
    Image.fromarray(values).save(tmp_path / "big16.png")
    Image.fromarray(values.astype(np.float32) / 65535).save(
        tmp_path / "bigf.tif", compression="tiff_adobe_deflate"
    )
    assert (tmp_path / "big16.png").stat().st_size < 200_000
    files = [str(tmp_path / "big16.png"), str(tmp_path / "bigf.tif")]
    results = _peak_memory_children(files, side)
    decoded = {files[0]: 2 * side * side / 2**20, files[1]: 4 * side * side / 2**20}
    for path, (mb, centre, margin) in results.items():
        assert mb < decoded[path] + 40, (path, mb)
        assert centre == 255 and margin == 0
