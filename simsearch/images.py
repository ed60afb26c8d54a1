"""Turn any input image into a 28x28 uint8 Fashion-MNIST-style image.

Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747, section 2) was made from product photos by:
trim the edges close to the corner colour, resize the longest edge to 28 with antialiasing,
sharpen, extend the shorter edge to 28 with the object centred, negate, convert to 8-bit gray.
:func:`preprocess` reproduces that framing so that a query photo lands in the same pixel space as
the catalog, and inverts the usual "re-photographing" of a catalog item (enlarged, tinted, dark on
white, JPEG, off centre) precisely enough that the item finds itself again:

* exact 28x28 grayscale images on a dark background (Fashion-MNIST itself) pass through bit for
  bit; other 28x28 images keep their framing (only polarity and contrast are normalised);
* the background is the median colour of the four corner patches; a bright background means a
  product photo (dark object) and the intensities are negated, a dark one means Fashion-MNIST
  polarity already;
* the object's box is found with a noise-aware threshold and refined to sub-pixel precision
  (edges where the profile crosses 55 % of the value a quarter output pixel inside), which
  undoes the halo that enlarging a 28 px item adds around it;
* the box is resampled (Hamming filter) so that its longest edge is 28 px, lightly sharpened
  when it was enlarged, and placed with the odd pixel of margin on the left/top, as in the real
  dataset; intensities are stretched so the object's peak is 255 (every Fashion-MNIST item peaks
  at 254 or 255).

Large images are box-reduced to about 512 px a strip at a time, before any float work and in
their own mode (16-bit, float, palette, CMYK, ...), so a call needs little memory beyond the
decoded image whatever its size and mode. Only numpy and Pillow are imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from simsearch.errors import InvalidImageError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "SIZE",
    "ImageInput",
    "load_image",
    "preprocess",
    "preprocess_array",
    "preprocess_batch",
]

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
"""A path, encoded image bytes, a Pillow image or an array (H, W), (H, W, 1), (H, W, 3) or
(H, W, 4) of uint8, uint16, bool, small integers or floats in [0, 1]."""

SIZE = 28
"""Side of the images the model knows."""

MAX_IMAGE_PIXELS: int = 8192 * 8192
"""Images with more pixels are refused before decoding (decompression bombs)."""

MAX_IMAGE_BYTES: int = 128 * 1024 * 1024
"""Encoded images (files or bytes) larger than this are refused without decoding."""

# Images are decoded (JPEG: DCT-scaled with ``draft``) and box-reduced to about this long side
# before any float work: plenty for a 28 px result, and it keeps a 6000x6000 photo fast.
_WORK_SIZE = 512
# Large images are normalised and reduced a strip of about this many pixels at a time.
_STRIP_PIXELS = 1 << 20
# Formats that may be opened. Deliberately short: no EPS/PDF (Ghostscript), no exotic decoders.
_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "ICO", "TGA", "AVIF")
_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "AVIF"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"

# The constants below were tuned by measuring, on 500 Fashion-MNIST train items re-photographed
# (enlarged 2-18x with bicubic, tinted, negated, pasted off centre, PNG or JPEG q85/90), the mean
# absolute error against the original and raw-pixel self-retrieval over the 60,000 items.
# Without the sub-pixel edge refinement rank-1 drops from ~0.90-0.97 to ~0.65; with the odd
# margin pixel on the right instead of the left it drops to ~0.53; no sharpening costs ~2 grey
# levels of mean error, Lanczos ~1.3, bicubic ~0.8, box ~0.2 against Hamming.
# Trimming thresholds, in grey levels of the background-subtracted intensity:
_T_LOSSLESS = 0.5  # lossless input: anything that differs from the background is object
_T_LOSSY = 2.0  # JPEG/WebP: above the faint ringing that survives a 3x3 box blur
_T_LOSSY_REL = 0.05  # lossy and enlarged < 8x: ringing spans whole pixels, use 5 % of the peak
_NOISE_K = 3.0  # threshold >= 3 sigma of the corner-patch noise (sigma from the MAD)
# A 3x3 box blur smooths the trimming mask (not the output) once the object is enlarged >= 2x
_REFINE_MIN_SCALE = 3.0  # sub-pixel edge refinement once the object is enlarged >= 3x
_EDGE_INSET = 0.25  # refinement samples the profile this many output pixels inside the edge ...
_EDGE_LEVEL = 0.55  # ... and puts the edge where the profile crosses this fraction of it
_SHARPEN = 0.15  # Laplacian sharpening of the 28 px result when the object was enlarged >= 2x
_RESAMPLE = Image.Resampling.HAMMING


def _fail(name: str, reason: str) -> InvalidImageError:
    """An InvalidImageError whose message is one line: ``"<reason>: <name>"``."""
    return InvalidImageError(" ".join(f"{reason}: {name}".splitlines()))


def _exc_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _describe(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return str(os.fspath(source))
    if isinstance(source, bytes | bytearray | memoryview):
        return f"image data ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape}"
    if isinstance(source, Image.Image):
        return "PIL image"
    return type(source).__name__


def _check_size(w: int, h: int, name: str) -> None:
    if w < 1 or h < 1:
        raise _fail(name, f"image has no pixels ({w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise _fail(name, f"image too large ({w}x{h} pixels, limit {MAX_IMAGE_PIXELS})")


@functools.cache
def _allowed_formats() -> tuple[str, ...]:
    """The formats of ``_FORMATS`` this Pillow can open (their plugins imported, nothing else)."""
    Image.preinit()
    for plugin in ("Mpo", "WebP", "Tiff", "Ico", "Tga", "Avif"):
        with contextlib.suppress(ImportError):  # a Pillow built without that codec
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def _decode(data: bytes, name: str, work: int | None) -> Image.Image:
    """Open and fully decode encoded image bytes (first frame), refusing bombs before decoding.

    With ``work`` set, a JPEG is decoded DCT-scaled to no less than ``work`` px on its long side.
    """
    if not data:
        raise _fail(name, "empty image")
    if len(data) > MAX_IMAGE_BYTES:
        raise _fail(name, f"image too large ({len(data)} bytes, limit {MAX_IMAGE_BYTES})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt-EXIF and similar chatter from plugins
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(_allowed_formats()))
            _check_size(*im.size, name)
            if work is not None and max(im.size) > 2 * work:
                w, h = im.size
                scale = work / max(w, h)
                im.draft(None, (max(1, int(w * scale)), max(1, int(h * scale))))
            im.load()  # full decode now: truncated data raises here
            _check_size(*im.size, name)
        except InvalidImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _fail(name, f"image too large ({_exc_text(exc)})") from None
        except UnidentifiedImageError:
            raise _fail(name, "not a recognised image (PNG, JPEG, WebP, BMP, GIF, TIFF)") from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
            raise _fail(name, f"truncated or corrupt image ({_exc_text(exc)})") from None
    return im


def _read_path(source: str | os.PathLike[str]) -> tuple[bytes, str]:
    path = Path(os.fspath(source))
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(name, "image file not found") from None
    except OSError as exc:
        raise _fail(name, f"cannot read image file ({_exc_text(exc)})") from None
    if path.is_dir():
        raise _fail(name, "not an image file but a directory")
    if st.st_size == 0:
        raise _fail(name, "empty image file")
    if st.st_size > MAX_IMAGE_BYTES:
        raise _fail(name, f"image file too large ({st.st_size} bytes, limit {MAX_IMAGE_BYTES})")
    try:
        return path.read_bytes(), name
    except OSError as exc:
        raise _fail(name, f"cannot read image file ({_exc_text(exc)})") from None


def _array_to_image(arr: np.ndarray, name: str) -> Image.Image:
    """(H, W) / (H, W, 1|3|4) array -> Pillow image of mode L, RGB or RGBA (uint8)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise _fail(name, "unsupported array shape (expected (H, W), (H, W, 3) or (H, W, 4))")
    _check_size(arr.shape[1], arr.shape[0], name)
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        a8 = arr
    elif kind == "b":
        a8 = arr.astype(np.uint8) * np.uint8(255)
    elif kind == "f":
        af = arr.astype(np.float64)
        if not np.isfinite(af).all():
            raise _fail(name, "array contains NaN or infinity")
        lo, hi = float(af.min()), float(af.max())
        if lo < -1e-3 or hi > 255.0:
            raise _fail(name, f"float array values must lie in [0, 1] (got {lo:g}..{hi:g})")
        scale = 255.0 if hi <= 1.0 + 1e-3 else 1.0  # values above 1: already 0..255 levels
        a8 = np.clip(np.rint(af * scale), 0, 255).astype(np.uint8)
    elif kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise _fail(name, f"integer array values must lie in [0, 65535] (got {lo}..{hi})")
        if arr.dtype == np.uint16 or hi > 255:
            a8 = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
        else:
            a8 = arr.astype(np.uint8)
    else:
        raise _fail(name, f"unsupported array dtype {arr.dtype}")
    a8 = np.ascontiguousarray(a8)
    if a8.ndim == 2:
        return Image.fromarray(a8, "L")
    return Image.fromarray(a8, "RGB" if a8.shape[2] == 3 else "RGBA")


def _load(source: ImageInput, work: int | None) -> tuple[Image.Image, str]:
    """Decoded image (not yet EXIF-oriented) and a name for messages."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_size(*source.size, name)
        try:
            source.load()
        except Exception as exc:
            raise _fail(name, f"truncated or corrupt image ({_exc_text(exc)})") from None
        return source, name
    if isinstance(source, np.ndarray):
        return _array_to_image(source, name), name
    if isinstance(source, bytes | bytearray | memoryview):
        return _decode(bytes(source), name, work), name
    if isinstance(source, str | os.PathLike):
        data, name = _read_path(source)
        return _decode(data, name, work), name
    raise InvalidImageError(f"unsupported image input type: {type(source).__name__}")


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """The transposition the image's EXIF orientation asks for (None: display as stored)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # unreadable EXIF: ignore it, the pixels are fine
        return None
    return _EXIF_TRANSPOSE.get(orientation)


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a new image if it is not 1, else ``im`` itself)."""
    if _orientation(im) is None:
        return im
    out = ImageOps.exif_transpose(im)
    return im if out is None else out


def load_image(source: ImageInput) -> Image.Image:
    """Open, validate and fully decode any supported input; apply its EXIF orientation.

    Paths and bytes may hold PNG, JPEG, WebP, BMP, GIF (first frame), TIFF, PPM, ICO or TGA.
    Arrays (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16, bool, integers or
    floats in [0, 1] become mode L, RGB or RGBA. The returned image is decoded in any mode
    Pillow gives (L, RGB, P, I;16, ...); the caller's own PIL image is returned as is when no
    rotation is needed.

    Raises:
        InvalidImageError: one line naming the input: missing path, directory, empty file,
            truncated or corrupt data, not an image, more than ``MAX_IMAGE_PIXELS`` pixels or
            ``MAX_IMAGE_BYTES`` bytes (checked before decoding), unsupported array.
    """
    im, _ = _load(source, None)
    return _orient(im)


def _gray28(im: Image.Image) -> np.ndarray | None:
    """The (28, 28) uint8 pixels if ``im`` is a 28x28 grayscale image (L, or gray RGB/RGBA/LA
    that is fully opaque), else None."""
    if im.size != (SIZE, SIZE):
        return None
    if im.mode == "L" and "transparency" not in im.info:
        return np.array(im, dtype=np.uint8)
    if im.mode not in ("RGB", "RGBA", "LA"):
        return None
    a = np.asarray(im)
    if im.mode != "RGB" and int(a[:, :, -1].min()) < 255:
        return None
    if im.mode == "LA":
        return a[:, :, 0].copy()
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2]):
        return a[:, :, 0].copy()
    return None


_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _values(im: Image.Image) -> np.ndarray:
    """The pixel values of a high-bit image as float32 (H, W); NaN and infinities become 0."""
    a = np.asarray(im).astype(np.float32)
    if im.mode == "F":
        np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return a


def _levels(a: np.ndarray, mode: str, extrema: tuple[float, float]) -> Image.Image:
    """Values of a high-bit image of ``mode`` -> mode F, levels in [0, 255]. The scaling is
    chosen from ``extrema``, the whole image's lowest and highest value."""
    lo, hi = extrema
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        a = a / 257.0
    elif lo >= 0.0 and mode == "F" and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0.0
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))


def _normalise_mode(im: Image.Image) -> Image.Image:
    """-> an image of mode L, RGB, RGBA (8-bit levels) or F (levels in [0, 255])."""
    mode = im.mode
    if mode in _HIGH_BIT_MODES:
        a = _values(im)
        return _levels(a, mode, (float(a.min()), float(a.max())))
    if mode in ("L", "RGB", "RGBA") and "transparency" not in im.info:
        return im
    if mode in ("1", "L") and "transparency" not in im.info:
        return im.convert("L")
    has_alpha = mode in ("LA", "La", "PA", "RGBa") or "transparency" in im.info
    if mode == "P" and not has_alpha:
        return im.convert("RGB")
    return im.convert("RGBA" if has_alpha else "RGB")


def _strips(im: Image.Image, factor: int) -> Iterator[tuple[int, Image.Image]]:
    """(top row, strip) pairs covering ``im``: strips of a multiple of ``factor`` rows and about
    ``_STRIP_PIXELS`` pixels."""
    w, h = im.size
    rows = factor * max(1, _STRIP_PIXELS // (w * factor))
    for y0 in range(0, h, rows):
        yield y0, im.crop((0, y0, w, min(h, y0 + rows)))


def _shrink(im: Image.Image, factor: int) -> Image.Image:
    """Box-reduce ``im`` by ``factor`` into a normalised mode (see :func:`_normalise_mode`).

    A strip at a time, so the memory this needs beyond the decoded image does not grow with the
    image. High-bit images are reduced first and scaled to levels after (both are linear), with
    the scaling chosen from the whole image's range as :func:`_normalise_mode` would.
    """
    if im.mode in ("L", "RGB") and "transparency" not in im.info:
        return im.reduce(factor)  # no copy (Pillow premultiplies a whole RGBA image first)
    high_bit = im.mode in _HIGH_BIT_MODES
    lo, hi = np.inf, -np.inf
    w, h = im.size
    out: Image.Image | None = None
    for y0, strip in _strips(im, factor):
        if high_bit:
            a = _values(strip)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            part = Image.fromarray(a).reduce(factor)
        else:
            part = _normalise_mode(strip).reduce(factor)
        if out is None:
            out = Image.new(part.mode, (-(-w // factor), -(-h // factor)))
        out.paste(part, (0, y0 // factor))
    if out is None:  # pragma: no cover - an image has at least one row
        raise InvalidImageError("image has no pixels")
    return _levels(np.asarray(out), im.mode, (lo, hi)) if high_bit else out


def _to_float(im: Image.Image) -> np.ndarray:
    """-> float32 (H, W, C), C = 1 (gray) or 3 (colour), levels in [0, 255], alpha flattened.

    Transparent pixels are background whatever their colour: they are composited onto black
    when the opaque part is light on average, else onto white, so the object always contrasts.
    """
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)[:, :, None]
    if im.mode == "L":
        return np.asarray(im, dtype=np.float32)[:, :, None]
    a = np.asarray(im, dtype=np.float32)
    if im.mode == "RGBA":
        alpha = a[:, :, 3:] / 255.0
        rgb = a[:, :, :3]
        if float(alpha.min()) < 1.0:
            opaque = alpha[:, :, 0] > 0.5
            light = bool(opaque.any()) and float((rgb[opaque] @ _LUMA).mean()) >= 127.5
            matte = 0.0 if light else 255.0
            rgb = rgb * alpha + matte * (1.0 - alpha)
        a = rgb
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2]):
        return a[:, :, :1]
    return a


def _box_blur3(a: np.ndarray) -> np.ndarray:
    """3x3 mean filter with edge padding: (H, W) -> (H, W) float32."""
    p = np.pad(a.astype(np.float32, copy=False), 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)


def _edge(p: np.ndarray, start: int, scale: float) -> float:
    """Sub-pixel position (pixel-edge coordinates) of the leading edge of a profile.

    ``p`` is the object's max-intensity profile along one axis, ``start`` the first index the
    threshold kept, ``scale`` the input pixels per output pixel. The edge is the fixed point e
    where ``p`` first crosses ``_EDGE_LEVEL`` times its value ``_EDGE_INSET`` output pixels
    inside e: the 50 %-ish point of a blurred step (an enlarged item's halo), and the step
    itself for a sharp edge. An object touching the image border has its edge there.
    """
    if start == 0:
        return 0.0
    n = len(p)
    inset = _EDGE_INSET * scale
    grid = np.arange(n, dtype=np.float64)
    e = float(start)
    for _ in range(8):
        level = _EDGE_LEVEL * float(np.interp(min(e + inset - 0.5, n - 1.0), grid, p))
        hit = np.flatnonzero(p[start:] >= level)
        if len(hit) == 0:
            break
        i = start + int(hit[0])
        if i == 0:
            new = 0.0
        else:
            a, b = float(p[i - 1]), float(p[i])
            new = max(0.0, i - 0.5 + ((level - a) / (b - a) if b > a else 0.5))
        done = abs(new - e) < 0.01
        e = new
        if done:
            break
    return e


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _stretch(a: np.ndarray, peak: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)


def preprocess(source: ImageInput) -> np.ndarray:
    """Any image -> (28, 28) uint8 in Fashion-MNIST framing and polarity (light object on black).

    A 28x28 grayscale image on a dark background (a Fashion-MNIST item as mode L, a (28, 28)
    uint8 array or a PNG of one) is returned unchanged, bit for bit.

    Raises:
        InvalidImageError: anything :func:`load_image` refuses, and a blank image (a single
            colour, or nothing that differs from the background colour).
    """
    im, name = _load(source, _WORK_SIZE)
    lossy = im.format in _LOSSY_FORMATS
    transpose = _orientation(im)
    factor = max(im.size) // _WORK_SIZE
    if factor >= 2:
        # Shrink before anything else, the EXIF rotation included: the extra memory stays small
        # whatever the size and mode of the image (a 16-bit 8192x8192 PNG is 128 MB decoded).
        im = _shrink(im, factor)
        if transpose is not None:
            im = im.transpose(transpose)
    else:
        if transpose is not None:
            im = im.transpose(transpose)
        exact = _gray28(im)
        if exact is not None:
            corners = np.concatenate(
                [exact[:2, :2], exact[:2, -2:], exact[-2:, :2], exact[-2:, -2:]], axis=None
            )
            if float(np.median(corners)) <= 127.5:  # dark corners: Fashion-MNIST polarity
                if int(exact.min()) == int(exact.max()):
                    raise _fail(name, "blank image (a single colour, no object)")
                return exact
        im = _normalise_mode(im)
    a = _to_float(im)
    return _frame(a, lossy, name)


def _frame(a: np.ndarray, lossy: bool, name: str) -> np.ndarray:
    """(H, W, C) float levels -> (28, 28) uint8: polarity, trim, resize, sharpen, centre."""
    h, w, c = a.shape
    k = max(1, round(min(h, w) / 14))  # corner patches: 2x2 px on a 28x28 image
    corners = np.concatenate([a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:]], axis=None).reshape(
        -1, c
    )
    bg = np.median(corners, axis=0)
    if c == 3:
        luma = a @ _LUMA
        corner_luma = corners @ _LUMA
        bg_luma = float(bg @ _LUMA)
    else:
        luma = a[:, :, 0]
        corner_luma = corners[:, 0]
        bg_luma = float(bg[0])
    # Bright background: a product photo, dark object: negate. Intensities relative to the
    # background; what is on the wrong side of it (lighter than a white background) is dropped.
    signed = (bg_luma - luma) if bg_luma > 127.5 else (luma - bg_luma)
    v = np.clip(signed, 0.0, None).astype(np.float32)
    sigma = 1.4826 * float(np.median(np.abs(corner_luma - bg_luma)))
    thr = max(_T_LOSSY if lossy else _T_LOSSLESS, _NOISE_K * sigma)
    mask = v > thr
    if not mask.any():
        raise _fail(name, "blank image (a single colour, no object)")
    if (h, w) == (SIZE, SIZE):  # already at model size: keep the framing
        return _stretch(v, float(v.max()))
    x0, y0, x1, y1 = _bbox(mask)
    scale = max(x1 - x0, y1 - y0) / SIZE  # input px per output px
    prof = v
    if scale >= 2.0:
        blurred = _box_blur3(signed)
        prof = np.clip(blurred, 0.0, None).astype(np.float32)
        peak = float(prof.max())
        if lossy and scale < 8.0:
            thr = max(thr, _T_LOSSY_REL * peak)
        mask = prof > thr
        if not mask.any():
            raise _fail(name, "blank image (a single colour, no object)")
        x0, y0, x1, y1 = _bbox(mask)
    fx0, fy0, fx1, fy1 = float(x0), float(y0), float(x1), float(y1)
    if scale >= _REFINE_MIN_SCALE:
        pc = prof[y0:y1].max(axis=0)
        pr = prof[:, x0:x1].max(axis=1)
        rx0 = _edge(pc, x0, scale)
        rx1 = w - _edge(pc[::-1], w - x1, scale)
        ry0 = _edge(pr, y0, scale)
        ry1 = h - _edge(pr[::-1], h - y1, scale)
        if rx1 - rx0 >= 1.0 and ry1 - ry0 >= 1.0:
            fx0, fy0, fx1, fy1 = rx0, ry0, rx1, ry1
    bw, bh = fx1 - fx0, fy1 - fy0
    if bh >= bw:
        th, tw = SIZE, min(SIZE, max(1, round(bw * SIZE / bh)))
    else:
        tw, th = SIZE, min(SIZE, max(1, round(bh * SIZE / bw)))
    box = (fx0, fy0, fx1, fy1)
    fim = Image.fromarray(v)
    small = np.asarray(fim.resize((tw, th), _RESAMPLE, box=box), dtype=np.float32)
    # Contrast: the object's peak becomes 255. Taken at 4x the output resolution, where an
    # enlarged item keeps its peaks but JPEG noise is averaged out.
    mid = fim.resize((4 * tw, 4 * th), Image.Resampling.BOX, box=box)
    peak = float(np.asarray(mid).max())
    if scale >= 2.0:  # undo part of the blur that enlarging then reducing causes
        p = np.pad(small, 1, mode="edge")
        lap = 4.0 * small - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        small = small + _SHARPEN * lap
    out = np.zeros((SIZE, SIZE), np.float32)
    oy, ox = (SIZE - th + 1) // 2, (SIZE - tw + 1) // 2  # odd pixel of margin: left / top
    out[oy : oy + th, ox : ox + tw] = np.clip(small, 0.0, None)
    if peak <= thr:
        raise _fail(name, "blank image (a single colour, no object)")
    res = _stretch(out, peak)
    if not res.any():
        raise _fail(name, "blank image (a single colour, no object)")
    return res


def preprocess_array(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 images -> (n, 28, 28) uint8, as :func:`preprocess` would give each one.

    Vectorised for the common case (Fashion-MNIST-like items, returned unchanged); only the
    others go through :func:`preprocess` one by one.

    Raises:
        InvalidImageError: for the first image that fails, its index in the message.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        return preprocess_batch(list(images))
    if len(images) == 0:
        return images.copy()
    corners = np.concatenate(
        [
            images[:, :2, :2].reshape(len(images), -1),
            images[:, :2, -2:].reshape(len(images), -1),
            images[:, -2:, :2].reshape(len(images), -1),
            images[:, -2:, -2:].reshape(len(images), -1),
        ],
        axis=1,
    )
    flat = images.reshape(len(images), -1)
    unchanged = (np.median(corners, axis=1) <= 127.5) & (flat.min(axis=1) != flat.max(axis=1))
    out = images.copy()
    others = np.flatnonzero(~unchanged)
    if len(others):
        out[others] = preprocess_batch(images[others], positions=others.tolist())
    return out


def preprocess_batch(
    sources: Sequence[ImageInput] | np.ndarray, positions: Sequence[int] | None = None
) -> np.ndarray:
    """Many inputs -> (n, 28, 28) uint8, one :func:`preprocess` result per input, in order.

    Raises:
        InvalidImageError: for the first input that fails, its index in the message.
    """
    out = np.zeros((len(sources), SIZE, SIZE), np.uint8)
    for i, src in enumerate(sources):
        try:
            out[i] = preprocess(src)
        except InvalidImageError as exc:
            position = i if positions is None else positions[i]
            raise InvalidImageError(f"item {position}: {exc}") from None
    return out
