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

A query searches a photo in several framings of the object found (:func:`preprocess_views`):
shifted by half a pixel and by one, a little smaller and larger, turned by a few degrees, with
the faint part of its base cut away or its base trimmed to the width above it, on a light floor
without a cast shadow, with faint parts lifted; each catalog item is judged by the view that
matches it best.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from simsearch import regions
from simsearch.errors import InvalidImageError

__all__ = [
    "AS_FOUND",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "SIZE",
    "ImageInput",
    "Views",
    "load_image",
    "preprocess",
    "preprocess_array",
    "preprocess_batch",
    "preprocess_views",
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

# A JPEG is decoded DCT-scaled (``draft``) to no less than this long side: a small item in a
# large photo keeps enough pixels, and decoding costs less than at full size (a 12-megapixel
# 4:3 photo decodes at 1/4 scale, about 1000x750, from here down).
_DECODE_SIZE = 960
# Large images are normalised and reduced a strip of about this many pixels at a time.
_STRIP_PIXELS = 1 << 20
# Formats that may be opened. Deliberately short: no EPS/PDF (Ghostscript), no exotic decoders.
_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "ICO", "TGA", "AVIF")
_LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "AVIF"})
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"
_RIM = 0.015  # a cut-out's outline band, share of its size, compared with the band inside it ...
_RIM_CONTRAST = 4.0  # ... when they differ by this many grey levels

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
# Finding the object in a photo (on the image reduced to about _ANALYSIS_SIZE px):
_ANALYSIS_SIZE = 256
_RING = 0.04  # the outer band where the background is looked for first, share of the short side
_EXACT_SHARE = 0.25  # a lossless image's band this much one exact colour: that is the background
_FIT_POINTS = 2048  # background pixels the surface is fitted to (a regular subsample)
_MAD_POINTS = 4096  # noise levels are measured on at most this many pixels
_MIN_AREA = 0.0005  # regions smaller than this share of the image are specks
_INNER_SHARE = 0.2  # a region cut by the frame's edge loses to one inside with this share of it
_GROUP_GAP = 0.08  # regions this close to the object (share of its size) belong to it ...
_GROUP_MASS = 0.01  # ... when they have at least this share of its mass
# Around the object mask, this share of its size (2 px of a 28 px item; at least 2 analysis
# pixels) is kept when cropping at full resolution: faint specks near an item frame it too.
_GATE = 2.0 / 28.0
_LIGHTER_SHARE = 0.03  # the object is partly lighter than its background from this share on
_LEVEL_QUANTILE = 0.9  # the object's level: this quantile of its darkness (not its few peaks)
_SHADOW_CORE = 0.4  # a cast shadow is fainter than this share of the object's level ...
_SHADOW_REACH = 0.75  # ... lies farther than this many item pixels from the object's body ...
_SHADOW_AREA = 0.05  # ... covers at least this share of the object's area ...
_SHADOW_SMOOTH = 0.018  # ... varies locally by less than this share of its darkness ...
_SHADOW_DARK = 0.04  # ... has a darkness between this share of the object's level ...
_SHADOW_FAINT = 0.22  # ... and this one, and lies low: its centre in the object's bottom 30 %
_SHADOW_LOW = 0.7
_SHADOW_BESIDE = 0.1  # ... and has this share of it beside the object's body, not under it
_NOISE_TEXTURE = 0.157  # the texture measure of white noise of sigma 1
_SHADOW_MARGIN = 1.2  # next to the shadow, what is up to its level times this is shadow too
_TINT = 0.08  # a background whose colour is this saturated is a coloured surface, not white
_CROP_SIZE = 336  # the object is cropped at a resolution where it is at most this many px
_TILT_MAX = 10.0  # tilts searched, degrees either way ...
_TILT_STEP = 0.25  # ... in these steps
_TILT_LEVEL = 0.05  # the silhouette is taken at this share of the object's level
_TILT_MIN = 1.0  # smaller tilts are left alone ...
# ... and so are those whose silhouette is not this much straighter (some catalog items are
# a little off vertical themselves: a weaker test turns those away from their catalog framing)
_TILT_GAIN = 1.45
# Other framings of a photo's object, searched alongside (see preprocess_views):
_VIEW_SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_VIEW_SHIFT_STEPS = (0.5, 1.0)  # output pixels, in those directions
# The as-found view and its half-pixel shifts again with faint parts lifted (intensity ** this):
# a camera's tone curve and a small item's few pixels weaken faint parts (a dim sole) that the
# catalog image keeps.
_VIEW_LIFT = 0.7
_LIFT_TABLE = np.rint(255.0 * (np.arange(256) / 255.0) ** _VIEW_LIFT).astype(np.uint8)
_VIEW_SCALE = 0.04  # the box this share smaller and larger
_VIEW_TURNS = (1.5, 3.0, 4.5)  # degrees, either way (under _TILT_MIN or _TILT_GAIN's test)
_VIEW_CUTS = (0.2, 0.3, 0.4, 0.5, 0.65)  # the bottom band without what is fainter than this
_VIEW_TURNED_CUTS = {3.0: (0.3, 0.5)}  # share of the object's level; turned ones too
_VIEW_BANDS = (0.25, 0.4, 0.55)  # the band: this share of the object's height
_VIEW_BAND = 0.4  # ... for the turned ones
# A floor shadow cast sideways at the base is as dark as a dim object: cut what lies, in the
# object's bottom _VIEW_TRIM_BAND of its height, beside its width in the _VIEW_TRIM_ABOVE of its
# height just above that band (with a margin of this share of the map's width).
_VIEW_TRIM_BAND = 0.55
_VIEW_TRIM_ABOVE = 0.15
_VIEW_TRIM_MARGIN = 0.02
# A shadow cast beside the object (a lamp to one side) rings its body with a faint band: the
# object without what, outside its body (darker than this share of its level, holes filled), is
# fainter than that share.
_VIEW_BODY = (0.3, 0.45)
# A cast shadow is a blurred silhouette: the faint part of the object that is reached from
# outside it without crossing texture (local mean deviation at the scale of an item pixel below
# _RIM_FLAT of the object's level, within a window of _RIM_WINDOW item pixels), fainter than
# _RIM_FAINT of that level and than _RIM_LIGHT (a shadow darkens the floor by at most about
# half) is cut in one view and, when it covers _RIM_AREA item pixels or more, also continued
# under the object and divided out (where the object's faint parts let it show through).
_RIM_FLAT = 0.03
_RIM_WINDOW = 2.0
_RIM_FAINT = 0.7
_RIM_LIGHT = 0.55 * 255.0
_RIM_AREA = 4.0
# A lamp's shadow is the object's silhouette moved aside, or flattened behind or in front of it
# about its base and slanted; blurred; darkening the floor by one share. It is fitted on a grid
# of _CAST_GRID cells per item pixel to what lies outside the object's body (darker than a share
# in _CAST_BODIES of its level: a light object's shadow can be darker than half its level):
# every shift (farther than _CAST_NEAR item pixels: nearer ones are the object's own rim) and
# every flattening in _CAST_SQUASH x _CAST_SLANT (columns moved per row of the shadow's height),
# each with the darkness that fits it best, that leaves _CAST_OUTSIDE of its area or more
# outside the body; then blurred by the box window (grid cells) in _CAST_BLURS that fits best,
# and divided out of the whole object.
_CAST_GRID = 2.0
_CAST_BODIES = (0.45, 0.65)
_CAST_NEAR = 1.5
_CAST_SQUASH = (0.3, 0.4, 0.5, 0.6, 0.7, 0.85)
_CAST_SLANT = tuple(round(-1.2 + 0.2 * i, 1) for i in range(13))
_CAST_OUTSIDE = 0.05
_CAST_BLURS = (1, 3, 5, 7)
# A light above an item on the floor puts a band of shadow under its base (its silhouette
# flattened), often as dark as a light item, so that no cut by level takes it away; but a
# fainter row lies between them. That gap: in the object's lower _GAP_SEARCH, the row whose
# peak darkness is lowest next to the peaks above and below it, under _GAP_DEPTH of the lesser
# of them, with at most _GAP_BAND of the object's height (and 2 item pixels) under it.
_GAP_SEARCH = 0.5
_GAP_DEPTH = 0.85
_GAP_BAND = 0.35


@dataclass(frozen=True)
class Steps:
    """What :func:`preprocess` did with one image, to show it (``simsearch.figures.explain``).

    Images are the analysed image: the input reduced to about 256 px, EXIF-oriented,
    transparency flattened.
    """

    image: np.ndarray
    """(h, w, 3) uint8: the image analysed."""
    background: np.ndarray
    """(h, w, 3) uint8: the background estimated from it (a colour or a smooth surface)."""
    mask: np.ndarray
    """(h, w) bool: the object found."""
    noise: float
    """Standard deviation of the background around its estimate, in grey levels."""
    dark_object: bool
    """True when the background is light and the object was negated (a product photo)."""
    shade: float
    """The background's reflectance as a share of white (1: white, or darker than the object)."""
    tilt: float
    """Degrees the object was turned back to upright (0: it was not)."""
    box: np.ndarray
    """(4, 2) float: the crop's corners (x, y) in ``image``'s pixels (turned when tilted)."""
    pixels: np.ndarray
    """(28, 28) uint8: the model input."""


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


Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), pixel edges


def _strips(im: Image.Image, factor: int, box: Box) -> Iterator[tuple[int, Image.Image]]:
    """(row offset, strip) pairs covering ``box`` of ``im``: strips of a multiple of ``factor``
    rows and about ``_STRIP_PIXELS`` pixels."""
    x0, y0, x1, y1 = box
    rows = factor * max(1, _STRIP_PIXELS // ((x1 - x0) * factor))
    for top in range(y0, y1, rows):
        yield top - y0, im.crop((x0, top, x1, min(y1, top + rows)))


def _to_levels(
    im: Image.Image, factor: int, box: Box | None = None, extrema: tuple[float, float] | None = None
) -> tuple[Image.Image, tuple[float, float] | None]:
    """The part ``box`` of ``im`` (all of it by default), box-reduced by ``factor``, in a
    normalised mode (see :func:`_normalise_mode`) -> (image, extrema).

    A strip at a time, so the memory this needs beyond the decoded image does not grow with the
    image. High-bit images are reduced first and scaled to levels after (both are linear); the
    scaling is chosen from ``extrema``, their lowest and highest value, as :func:`_normalise_mode`
    would from the whole image's (found here when None, and returned for the next part).
    """
    box = box or (0, 0, im.width, im.height)
    high_bit = im.mode in _HIGH_BIT_MODES
    if factor == 1 and not high_bit:
        return _normalise_mode(im.crop(box) if box != (0, 0, *im.size) else im), None
    if im.mode in ("L", "RGB") and "transparency" not in im.info:
        return im.reduce(factor, box), None  # no copy (Pillow premultiplies a whole RGBA first)
    lo, hi = np.inf, -np.inf
    w, h = box[2] - box[0], box[3] - box[1]
    out: Image.Image | None = None
    for top, strip in _strips(im, factor, box):
        if high_bit:
            a = _values(strip)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            part = Image.fromarray(a).reduce(factor) if factor > 1 else Image.fromarray(a)
        else:
            part = _normalise_mode(strip).reduce(factor)
        if out is None:
            out = Image.new(part.mode, (-(-w // factor), -(-h // factor)))
        out.paste(part, (0, top // factor))
    if out is None:  # pragma: no cover - a box has at least one row
        raise InvalidImageError("image has no pixels")
    if not high_bit:
        return out, None
    extrema = extrema or (lo, hi)
    return _levels(np.asarray(out), im.mode, extrema), extrema


def _unorient_box(box: Box, transpose: Image.Transpose | None, size: tuple[int, int]) -> Box:
    """A box of the EXIF-oriented image -> the same pixels' box in the stored image of ``size``."""
    x0, y0, x1, y1 = box
    w, h = size
    t = Image.Transpose
    if transpose is None:
        return box
    return {
        t.FLIP_LEFT_RIGHT: (w - x1, y0, w - x0, y1),
        t.FLIP_TOP_BOTTOM: (x0, h - y1, x1, h - y0),
        t.ROTATE_180: (w - x1, h - y1, w - x0, h - y0),
        t.ROTATE_90: (w - y1, x0, w - y0, x1),
        t.ROTATE_270: (y0, h - x1, y1, h - x0),
        t.TRANSPOSE: (y0, x0, y1, x1),
        t.TRANSVERSE: (w - y1, h - x1, w - y0, h - x0),
    }[transpose]


def _to_float(im: Image.Image, matte: float | None = None) -> tuple[np.ndarray, float]:
    """-> (float32 (H, W, C), C = 1 (gray) or 3 (colour), levels in [0, 255], alpha flattened;
    the matte level used).

    Transparent pixels are background whatever their colour: they are composited onto black
    (``matte`` 0) behind a light object (a catalog-style cut-out) and onto white (255) behind a
    dark one (a product cut-out), so the object always contrasts; see :func:`_light_cutout`.
    """
    if im.mode in ("F", "L"):
        return np.asarray(im, dtype=np.float32)[:, :, None], 255.0
    a = np.asarray(im, dtype=np.float32)
    if im.mode == "RGBA":
        alpha = a[:, :, 3:] / 255.0
        rgb = a[:, :, :3]
        if matte is None:
            matte = 0.0 if _light_cutout(rgb @ _LUMA, alpha[:, :, 0] > 0.5) else 255.0
        if float(alpha.min()) < 1.0:
            rgb = rgb * alpha + matte * (1.0 - alpha)
        a = rgb
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 0], a[:, :, 2]):
        a = a[:, :, :1]
    return a, 255.0 if matte is None else matte


def _light_cutout(luma: np.ndarray, opaque: np.ndarray) -> bool:
    """Is the opaque part of a cut-out a light object (shown on black) or a dark one (on white)?

    An object fades towards what it was cut from along its outline: if its outermost band is
    clearly darker than the band just inside, it is a light object, if clearly lighter a dark
    one. A flat outline (a hard cut-out of a flat colour) leaves it to the mean level.
    """
    if not opaque.any():
        return False
    rows = np.flatnonzero(opaque.any(axis=1))
    cols = np.flatnonzero(opaque.any(axis=0))
    r = max(1, round(_RIM * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    inner = regions.erode(opaque, r)
    rim = opaque & ~inner
    band = inner & ~regions.erode(inner, 2 * r)
    if rim.any() and band.any():
        diff = float(luma[band].mean()) - float(luma[rim].mean())
        if abs(diff) >= _RIM_CONTRAST:
            return diff > 0
    return float(luma[opaque].mean()) >= 127.5


def _level(values: np.ndarray, mask: np.ndarray) -> float:
    """The object's level: the _LEVEL_QUANTILE of ``values`` over its ``mask``."""
    return float(np.quantile(values[mask], _LEVEL_QUANTILE))


def _box(a: np.ndarray, size: float) -> np.ndarray:
    """Mean over a square window of ``size`` px (rounded up to odd), edges padded: (H, W) ->
    (H, W) float32; by running sums, so its cost does not grow with the window."""
    k = max(1, round(size)) | 1
    r = k // 2
    c = np.pad(a.astype(np.float64), r, mode="edge").cumsum(axis=0)
    c = np.concatenate([np.zeros((1, c.shape[1])), c], axis=0)
    c = (c[k:] - c[:-k]).cumsum(axis=1)
    c = np.concatenate([np.zeros((c.shape[0], 1)), c], axis=1)
    return ((c[:, k:] - c[:, :-k]) / (k * k)).astype(np.float32)


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
            # (the pixel before ``start`` may already be above the level: clamp to this pixel)
            frac = min(1.0, max(0.0, (level - a) / (b - a))) if b > a else 0.5
            new = max(0.0, i - 0.5 + frac)
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
    uint8 array or a PNG of one) is returned unchanged, bit for bit. Any other image is searched
    for its object (see the module's description) which is cropped, turned upright if tilted,
    and framed as the catalog's items are.

    Raises:
        InvalidImageError: anything :func:`load_image` refuses, and a blank image (a single
            colour, or nothing that stands out from the background).
    """
    return _preprocess(source, None)


def explain(source: ImageInput) -> tuple[np.ndarray, Steps | None]:
    """:func:`preprocess` and what it did: ((28, 28) uint8, :class:`Steps`), Steps None for a
    28x28 image (used as it is, or only negated and stretched).

    Raises:
        InvalidImageError: as :func:`preprocess`.
    """
    record: list[Steps] = []
    pixels = _preprocess(source, record)
    return pixels, (record[0] if record else None)


@dataclass(frozen=True)
class Views:
    """A query image as the model sees it, framed several ways (see :func:`preprocess_views`)."""

    pixels: np.ndarray
    """(v, 28, 28) uint8; ``pixels[0]`` is :func:`preprocess`'s result."""
    names: tuple[str, ...]
    """How each view frames the object: "as found" first, then e.g. "turned +3.0 deg"."""
    steps: Steps | None = None
    """What preprocessing found, when asked (see :func:`explain`)."""


AS_FOUND = "as found"


def preprocess_views(source: ImageInput, explain: bool = False) -> Views:
    """:func:`preprocess` and other framings of the object it found in a photo.

    A photographed object is never framed exactly as its catalog item is: a tilt too small to
    correct with confidence, an edge half a pixel off, a floor shadow joined to its base. The
    other views are the object shifted by half an output pixel and by one (8 directions each),
    4 % smaller and larger, turned by 1.5, 3 and 4.5 degrees either way, with the faint part
    of its bottom band cut away at a few levels (where a floor shadow lies), with its base
    trimmed to the width above it (a shadow cast beside it), on a light floor without a cast
    shadow (its body alone, or the shadow cut or divided out: see _VIEW_BODY and _RIM_FLAT;
    or a lamp's shadow fitted as its silhouette moved or flattened and divided out: _CAST_GRID;
    or the band of shadow under its base cut at the fainter row above it: _GAP_DEPTH),
    and the as-found and half-pixel views with faint parts lifted (a camera's tone curve or a
    small item's few pixels weaken a dim sole the catalog image keeps). A query searches with
    every view and keeps each catalog item's best similarity: the framing that matches an item
    best is the one it is judged by. A 28x28 input has one view (itself, as :func:`preprocess`
    gives it). With ``explain``, ``steps`` says what preprocessing found (None for 28x28).

    Raises:
        InvalidImageError: as :func:`preprocess`.
    """
    record: list[Steps] | None = [] if explain else None
    others: list[tuple[str, np.ndarray]] = []
    pixels = _preprocess(source, record, others)
    return Views(
        np.stack([pixels] + [p for _, p in others]),
        (AS_FOUND, *(name for name, _ in others)),
        record[0] if record else None,
    )


def _preprocess(
    source: ImageInput,
    record: list[Steps] | None,
    others: list[tuple[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """:func:`preprocess`; what it did appended to ``record`` and the other views of a photo
    (:func:`preprocess_views`) to ``others``, when given."""
    im, name = _load(source, _DECODE_SIZE)
    lossy = im.format in _LOSSY_FORMATS
    transpose = _orientation(im)
    if im.size == (SIZE, SIZE):
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
        return _frame28(_to_float(_normalise_mode(im))[0], lossy, name)
    # The object is found on a small copy; only its neighbourhood is then read at a resolution
    # that suits its size. Both are box-reduced from the decoded image a strip at a time, before
    # the EXIF rotation, so the memory needed stays small whatever the image's size and mode.
    factor = max(1, -(-max(im.size) // _ANALYSIS_SIZE))
    small, extrema = _to_levels(im, factor)
    if transpose is not None:
        small = small.transpose(transpose)
    a, matte = _to_float(small)
    scene = _analyse(a, lossy)
    if scene is None:
        raise _fail(name, "blank image (a single colour, no object)")
    oriented = im.size if transpose not in _SWAPS else (im.height, im.width)
    box, step = _region(scene, factor, oriented)
    part, _ = _to_levels(im, step, _unorient_box(box, transpose, im.size), extrema)
    if transpose is not None:
        part = part.transpose(transpose)
    roi, _ = _to_float(part, matte)
    floor = _T_LOSSY if lossy else _T_LOSSLESS
    # pixel edges of the neighbourhood -> of the analysis image: origin + scale * (x, y)
    origin = np.array([box[0], box[1]], np.float64) / factor
    signed, thr, tilt, to_analysis = _object_map(roi, scene, floor, origin, step / factor)
    frame = _frame(signed, thr, lossy, name)
    pixels, crop = _resample(frame, frame.box, name), frame.box
    if record is not None:
        record.append(_steps(scene, tilt, to_analysis, crop, pixels))
    if others is not None:
        others.extend(_views(signed, thr, frame, lossy, name, pixels, scene.dark_object))
    return pixels


_SWAPS = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def _region(scene: _Scene, factor: int, size: tuple[int, int]) -> tuple[Box, int]:
    """The object's neighbourhood in the (oriented) decoded image of ``size`` and the factor it
    is reduced by so that the object is at most _CROP_SIZE px: (box, step); the box's sides are
    multiples of the step unless it reaches the image's edge."""
    rows = np.flatnonzero(scene.mask.any(axis=1))
    cols = np.flatnonzero(scene.mask.any(axis=0))
    extent = int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    margin = max(2, round(_GATE * extent)) + 3
    step = max(1, -(-extent * factor // _CROP_SIZE))
    w, h = size
    x0 = max(0, int(cols[0] - margin) * factor)
    y0 = max(0, int(rows[0] - margin) * factor)
    x1 = min(w, int(cols[-1] + 1 + margin) * factor)
    y1 = min(h, int(rows[-1] + 1 + margin) * factor)
    x1 = min(w, x0 + max(step, (x1 - x0) // step * step))
    y1 = min(h, y0 + max(step, (y1 - y0) // step * step))
    return (x0, y0, x1, y1), step


def _frame28(a: np.ndarray, lossy: bool, name: str) -> np.ndarray:
    """A 28x28 image that is not Fashion-MNIST-like as such: polarity and contrast only."""
    c = a.shape[2]
    k = 2  # corner patches: 2x2 px
    corners = np.concatenate([a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:]], axis=None).reshape(
        -1, c
    )
    bg = np.median(corners, axis=0)
    luma = a @ _LUMA if c == 3 else a[:, :, 0]
    corner_luma = corners @ _LUMA if c == 3 else corners[:, 0]
    bg_luma = float(bg @ _LUMA) if c == 3 else float(bg[0])
    signed = (bg_luma - luma) if bg_luma > 127.5 else (luma - bg_luma)
    v = np.clip(signed, 0.0, None).astype(np.float32)
    sigma = 1.4826 * float(np.median(np.abs(corner_luma - bg_luma)))
    thr = max(_T_LOSSY if lossy else _T_LOSSLESS, _NOISE_K * sigma)
    if not (v > thr).any():
        raise _fail(name, "blank image (a single colour, no object)")
    return _stretch(v, float(v.max()))


@dataclass
class _Scene:
    """What :func:`_analyse` found on the analysis image (the input reduced to ~256 px)."""

    image: np.ndarray  # (h, w, C) float levels
    luma: np.ndarray  # (h, w)
    coef: np.ndarray  # (6, C) background surface: columns of _surface_terms -> levels
    dark_object: bool  # light background: the object is darker (a product photo)
    darkness: np.ndarray  # (h, w) object-signed difference from the background, in levels
    noise: float  # sigma of ``darkness`` on the background
    mask: np.ndarray  # (h, w) bool: the object
    shade: float  # the background's reflectance as a share of white (see _shade)


def _surface_terms(yy: np.ndarray, xx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, 6) quadratic terms [1, x, y, x^2, xy, y^2] of points (``yy``, ``xx``, any shape, in
    the analysis image's pixel coordinates), normalised to [-1, 1] over ``shape`` (h, w)."""
    y = (yy.ravel().astype(np.float32) + 0.5) * (2.0 / shape[0]) - 1.0
    x = (xx.ravel().astype(np.float32) + 0.5) * (2.0 / shape[1]) - 1.0
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _surface(
    coef: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """The quadratic surface ``coef`` (6, C) (terms as :func:`_surface_terms`) on the grid of
    rows ``ys`` x columns ``xs`` (analysis image pixel coordinates): (len(ys), len(xs), C),
    evaluated separably (no (n, 6) matrix of terms for every pixel)."""
    y = ((np.asarray(ys, np.float32) + 0.5) * (2.0 / shape[0]) - 1.0)[:, None, None]
    x = ((np.asarray(xs, np.float32) + 0.5) * (2.0 / shape[1]) - 1.0)[None, :, None]
    k = np.asarray(coef, np.float32)
    return (k[0] + x * (k[1] + x * k[3] + y * k[4])) + y * (k[2] + y * k[5])


def _grid_surface(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """:func:`_surface` at every pixel of an (h, w) analysis image: (h, w, C)."""
    return _surface(coef, np.arange(h), np.arange(w), (h, w))


def _luma_coef(coef: np.ndarray) -> np.ndarray:
    """(6, 1): the surface ``coef`` (6, C) of the luma (the terms are linear in ``coef``: one
    surface instead of C and a (h, w, C) product)."""
    return coef @ _weights(coef.shape[1])[:, None]


def _mad_sigma(values: np.ndarray) -> float:
    """Robust standard deviation (1.4826 median absolute deviation) of at most _MAD_POINTS
    evenly spaced ``values``."""
    values = values.ravel()
    if values.size == 0:
        return 0.0
    if values.size > _MAD_POINTS:
        values = values[:: values.size // _MAD_POINTS + 1]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _ring(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the image's outer band, where the background is looked for first."""
    b = max(1, round(_RING * min(h, w)))
    ring = np.ones((h, w), bool)
    ring[b:-b, b:-b] = False
    return ring


def _exact_background(
    image: np.ndarray, luma: np.ndarray, ring: np.ndarray
) -> tuple[np.ndarray, bool, np.ndarray] | None:
    """A lossless image whose outer band is largely one exact colour (a rendered or composited
    image: the catalog's black, a cut-out's matte) has that colour as its background, even
    where the object fills most of the band; else None (a photo: fit it)."""
    values, counts = np.unique(luma[ring], return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < _EXACT_SHARE * int(ring.sum()):
        return None
    is_bg = luma == values[top]
    coef = np.zeros((6, image.shape[2]), np.float32)
    coef[0] = np.median(image[is_bg], axis=0)
    return coef, bool(values[top] > 127.5), is_bg


def _fit_background(
    image: np.ndarray, luma: np.ndarray, ring: np.ndarray
) -> tuple[np.ndarray, bool, np.ndarray]:
    """-> (coef (6, C), dark_object, background pixels (h, w) bool).

    The background is a smooth surface (uneven light, vignetting): a quadratic in x and y per
    channel, fitted robustly first to the outer band, then to every pixel that looks like
    background. A constant is kept unless the surface fits clearly better.
    """
    h, w, c = image.shape
    flat = image.reshape(-1, c)
    level = float(np.median(luma[ring]))
    dark_object = level > 127.5
    spread = max(_mad_sigma(luma[ring]), 0.5)
    sample = ring & (np.abs(luma - level) <= 4.0 * spread)
    coef = np.zeros((6, c), np.float32)
    for _ in range(3):
        idx = np.flatnonzero(sample.ravel())
        if len(idx) > _FIT_POINTS:
            idx = idx[:: len(idx) // _FIT_POINTS + 1]
        points = flat[idx]
        const = np.median(points, axis=0)
        terms = _surface_terms(idx // w, idx % w, (h, w))
        quad = _least_squares(terms, points)
        r_const = (points - const) @ _weights(c)
        r_quad = (points - terms @ quad) @ _weights(c)
        # the surface only where it explains the background clearly better than a colour
        if _mad_sigma(r_quad) < 0.8 * _mad_sigma(r_const):
            coef = quad
        else:
            coef = np.zeros((6, c), np.float32)
            coef[0] = const
        resid = luma.ravel() - _grid_surface(_luma_coef(coef), h, w).ravel()
        if not dark_object:
            resid = -resid
        sigma = max(_mad_sigma(resid[idx]), 0.5)
        # background: within 3 sigma below it, 5 above it (the object is on one side only)
        sample = ((resid > -3.0 * sigma) & (resid < 5.0 * sigma)).reshape(h, w)
    return coef, dark_object, sample


def _least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_x |a x - b| for a few columns, by the normal equations (an SVD costs ~100x more)."""
    a64 = a.astype(np.float64)
    gram = a64.T @ a64
    gram += np.eye(len(gram)) * (1e-9 * float(np.trace(gram)))  # a degenerate sample: stay finite
    return np.linalg.solve(gram, a64.T @ b.astype(np.float64)).astype(np.float32)


def _weights(c: int) -> np.ndarray:
    return _LUMA if c == 3 else np.ones(1, np.float32)


def _analyse(image: np.ndarray, lossy: bool) -> _Scene | None:
    """Background, noise and object mask of the analysis image (H, W, C) float levels."""
    c = image.shape[2]
    ah, aw = image.shape[:2]
    luma = image @ _LUMA if c == 3 else image[:, :, 0]
    ring = _ring(ah, aw)
    exact = None if lossy else _exact_background(image, luma, ring)
    coef, dark_object, is_bg = exact or _fit_background(image, luma, ring)
    bg_luma = _grid_surface(_luma_coef(coef), ah, aw)[:, :, 0]
    darkness = _darkness(luma, bg_luma, dark_object)
    smooth = _box_blur3(darkness)
    noise = _mad_sigma(darkness[is_bg])
    noise_s = _mad_sigma(smooth[is_bg])
    low = max((_T_LOSSY if lossy else _T_LOSSLESS), _NOISE_K * noise_s)
    # The object is what differs from the background either way: a light item on a cream sheet
    # has parts lighter than the sheet (see _shade).
    mask = _object_mask(np.abs(smooth), low, 2.0 * low)
    if mask is None:
        return None
    shade = _shade(smooth, mask, low, coef, bg_luma) if dark_object else 1.0
    return _Scene(image, luma, coef, dark_object, darkness, noise, mask, shade)


def _shade(
    smooth: np.ndarray, mask: np.ndarray, low: float, coef: np.ndarray, bg_luma: np.ndarray
) -> float:
    """The background's reflectance as a share of white, or 1 when it looks white.

    A product photo's object is measured against white: its darkness is 1 - reflectance.
    A neutral background is taken as white (a white sheet, however it is lit or exposed) unless
    part of the object is clearly lighter than it; a tinted one (cream, beige) is a coloured
    surface. Then its reflectance is its level where it is lit most, as a share of 255 (a photo
    exposed for white). ``coef``: the fitted background (see :func:`_surface`), ``bg_luma``
    its (h, w) luma.
    """
    y, x = np.unravel_index(int(np.argmax(bg_luma)), bg_luma.shape)
    brightest = _surface(coef, np.array([y]), np.array([x]), bg_luma.shape)[0, 0]
    level = float(bg_luma[y, x])
    tint = float((brightest.max() - brightest.min()) / max(float(brightest.max()), 1.0))
    lighter = -smooth[mask]  # relative levels: 255 (luma - background) / background
    lighter_parts = lighter.size >= 16 and np.mean(lighter > 2.0 * low) >= _LIGHTER_SHARE
    if tint < _TINT and not lighter_parts:
        return 1.0
    return float(np.clip(level / 255.0, 0.05, 1.0))


def _darkness(luma: np.ndarray, bg_luma: np.ndarray, dark_object: bool) -> np.ndarray:
    """Object-signed difference from the background, in levels: on a light background the
    relative darkness (so that uneven light cancels), on a dark one the difference."""
    if dark_object:
        return ((bg_luma - luma) * (255.0 / np.maximum(bg_luma, 1.0))).astype(np.float32)
    return (luma - bg_luma).astype(np.float32)


def _object_mask(smooth: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """The object: regions above ``low`` that reach ``high``, the largest one and those near
    it, specks dropped and holes filled; None if there is nothing."""
    h, w = smooth.shape
    labels, count = regions.label(smooth > low)
    if count == 0:
        return None
    flat = labels.ravel()
    area = np.bincount(flat, minlength=count + 1)[1:]
    mass = np.bincount(flat, weights=smooth.ravel(), minlength=count + 1)[1:]
    reaches = np.bincount(flat[smooth.ravel() >= high], minlength=count + 1)[1:] > 0
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touches = np.zeros(count, bool)
    touches[edge[edge > 0] - 1] = True
    keep = reaches & (area >= max(2, _MIN_AREA * h * w))
    if not keep.any():
        keep = reaches
        if not keep.any():
            return None
    score = np.where(keep, mass, -1.0)
    main = int(np.argmax(score))
    inner = np.where(keep & ~touches, mass, -1.0)
    if touches[main] and inner.max() >= _INNER_SHARE * mass[main]:
        main = int(np.argmax(inner))  # clutter cut by the frame's edge, the object inside
    y0, x0, y1, x1 = regions.boxes(labels, count)
    gap = _GROUP_GAP * max(y1[main] - y0[main] + 1, x1[main] - x0[main] + 1)
    dy = np.maximum(0, np.maximum(y0 - y1[main], y0[main] - y1))
    dx = np.maximum(0, np.maximum(x0 - x1[main], x0[main] - x1))
    near = (
        keep
        & (np.maximum(dx, dy) <= gap)
        & (mass >= _GROUP_MASS * mass[main])
        & (~touches | touches[main])
    )
    near[main] = True
    chosen = np.concatenate([[False], near])
    return regions.fill_holes(chosen[labels])


def _outline(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel points (x, y) where ``values`` first and last rises above ``level`` along
    every row and every column: the object's outer silhouette."""
    m = values > level
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for v, mm, transpose in ((values, m, False), (values.T, m.T, True)):
        lines = np.flatnonzero(mm.any(axis=1))
        n = v.shape[1]
        first = np.argmax(mm[lines], axis=1)
        last = n - 1 - np.argmax(mm[lines, ::-1], axis=1)
        for inside, step in ((first, -1), (last, 1)):
            outside = inside + step
            ok = (outside >= 0) & (outside < n)
            li, ins, out = lines[ok], inside[ok], outside[ok]
            a, b = v[li, out], v[li, ins]
            pos = out + (level - a) / np.maximum(b - a, 1e-6) * (ins - out)
            if transpose:
                xs.append(li.astype(np.float64))
                ys.append(pos.astype(np.float64))
            else:
                xs.append(pos.astype(np.float64))
                ys.append(li.astype(np.float64))
    return np.concatenate(xs), np.concatenate(ys)


def _tilt(smooth: np.ndarray, mask: np.ndarray, low: float) -> float:
    """Degrees the object is turned counter-clockwise, 0 unless clearly so.

    Catalog items stand upright and their outer silhouette has long straight vertical and
    horizontal runs (sides, hems, soles). The silhouette points are projected on axes turned by
    each candidate angle; the angle whose projections pile up most (sum of squared histogram
    counts) wins, if it is at least _TILT_MIN off and piles up clearly more than upright.
    """
    values = np.where(mask, smooth, 0.0)
    inside = values[mask]
    level = max(low, _TILT_LEVEL * float(np.quantile(inside, 0.95))) if inside.size else low
    xs, ys = _outline(values, level)
    if len(xs) < 16:
        return 0.0
    angles = np.arange(-_TILT_MAX, _TILT_MAX + 1e-9, _TILT_STEP)
    t = np.radians(angles)[:, None]
    c, s = np.cos(t), np.sin(t)
    scores = _pile_up(xs * c - ys * s) + _pile_up(xs * s + ys * c)
    j = int(np.argmax(scores))
    best = float(angles[j])
    if 0 < j < len(angles) - 1:  # parabola through the peak and its neighbours
        y0, y1, y2 = scores[j - 1 : j + 2]
        den = y0 - 2.0 * y1 + y2
        if den < 0:
            best += float(0.5 * (y0 - y2) / den) * _TILT_STEP
    upright = scores[int(np.argmin(np.abs(angles)))]
    if abs(best) < _TILT_MIN or scores[j] < _TILT_GAIN * upright:
        return 0.0
    return best


def _pile_up(u: np.ndarray) -> np.ndarray:
    """(A, N) projections -> (A,) sums of squared counts of each row's histogram in half-pixel
    bins (linear binning): large when many points share a line."""
    z = (u - u.min(axis=1, keepdims=True)) * 2.0
    i = np.floor(z).astype(np.int64)
    f = z - i
    width = int(i.max()) + 2
    i += np.arange(len(u))[:, None] * width  # one histogram per row, side by side
    size = len(u) * width
    hist = np.bincount(i.ravel(), weights=(1.0 - f).ravel(), minlength=size)
    hist[1:] += np.bincount(i.ravel(), weights=f.ravel(), minlength=size)[:-1]
    return (hist * hist).reshape(len(u), width).sum(axis=1)


def _object_map(
    roi: np.ndarray, scene: _Scene, floor: float, origin: np.ndarray, scale: float
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """The object's neighbourhood ``roi`` (H, W, C) as signed darkness, turned upright if tilted.

    ``roi``'s pixel edges (x, y) are ``origin + scale * (x, y)`` in the analysis image. Returns
    (signed darkness, 0 away from the object; the threshold above which it is object, ``floor``
    or more with noise; the tilt corrected in degrees; (2, 3) affine map from its pixel edges to
    the analysis image's).
    """
    h, w, c = roi.shape
    luma = roi @ _LUMA if c == 3 else roi[:, :, 0]
    # the background surface at these pixels' centres, as analysis image pixel indices
    ys = origin[1] + (np.arange(h) + 0.5) * scale - 0.5
    xs = origin[0] + (np.arange(w) + 0.5) * scale - 0.5
    bg_luma = _surface(_luma_coef(scene.coef), ys, xs, scene.mask.shape)[:, :, 0]
    signed = _darkness(luma, bg_luma, scene.dark_object)
    rows = np.flatnonzero(scene.mask.any(axis=1))
    cols = np.flatnonzero(scene.mask.any(axis=0))
    radius = max(2, round(_GATE * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    gate_a = regions.dilate(scene.mask, radius)
    gy = np.clip(np.floor(ys + 0.5).astype(int), 0, gate_a.shape[0] - 1)
    gx = np.clip(np.floor(xs + 0.5).astype(int), 0, gate_a.shape[1] - 1)
    gate = gate_a[np.ix_(gy, gx)]
    outside = signed[~gate]
    sigma = _mad_sigma(outside) if outside.size >= 64 else scene.noise / scale
    thr = max(floor, _NOISE_K * sigma)
    if scene.shade < 1.0:
        # Darkness against white (1 - reflectance) where the object differs from the
        # background either way; the background itself, not white, stays 0, and the object's
        # fringe (part object, part background) goes from one to the other.
        offset = 255.0 * (1.0 - scene.shade)
        weight = np.clip((np.abs(_box_blur3(signed)) - thr) / offset, 0.0, 1.0)
        weight = np.where(regions.fill_holes(gate & (weight > 0)), np.maximum(weight, 0.0), 0.0)
        inside = regions.fill_holes(weight >= 1.0)
        weight = np.where(inside, 1.0, weight)
        against_white = 255.0 - scene.shade * (255.0 - signed)
        signed = weight * against_white + (1.0 - weight) * np.maximum(signed, 0.0)
    part = np.where(gate, signed, 0.0).astype(np.float32)
    unit = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / scale / SIZE  # px per item px
    smooth = _box_blur3(part)
    # A cast shadow shows on a light surface only: on a dark one (the catalog's polarity) a
    # faint, smooth region low in the object is part of it (a sneaker's sole).
    without = _drop_shadow(part, smooth, thr, sigma, unit) if scene.dark_object else part
    if without is not part:
        part, smooth = without, _box_blur3(without)
    to_analysis = np.array([[scale, 0.0, origin[0]], [0.0, scale, origin[1]]])
    tilt = _tilt(smooth, smooth > thr, thr)
    if tilt:
        turned = Image.fromarray(part).rotate(
            -tilt, Image.Resampling.BILINEAR, expand=True, fillcolor=0.0
        )
        # Pillow maps an output point q to the input point c_in + M (q - c_out)
        t = np.radians(tilt)
        rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
        c_in = np.array([w / 2.0, h / 2.0])
        c_out = np.array([turned.width / 2.0, turned.height / 2.0])
        lin = to_analysis[:, :2] @ rot
        shift = to_analysis[:, :2] @ (c_in - rot @ c_out) + to_analysis[:, 2]
        to_analysis = np.hstack([lin, shift[:, None]])
        part = np.asarray(turned, np.float32)
    return part, thr, tilt, to_analysis


def _drop_shadow(
    part: np.ndarray, smooth: np.ndarray, thr: float, sigma: float, unit: float
) -> np.ndarray:
    """``part`` without the cast shadow of the object.

    The object's body is what is darker than _SHADOW_CORE of its level (holes filled), with
    _SHADOW_REACH item pixels (``unit`` px each) around it. A faint region beyond that is a
    shadow on the floor when it is large (_SHADOW_AREA of the object; an item's faint parts are
    thin), smooth (a blurred silhouette: no texture), not too faint (_SHADOW_DARK of the level)
    and lies in the object's lower part. Shadows are set to 0. ``smooth``: ``part`` box-blurred.
    """
    obj = smooth > thr
    if obj.sum() < 64:
        return part
    level = _level(smooth, obj)
    core = regions.fill_holes(smooth > _SHADOW_CORE * level)
    near = regions.dilate(core, max(1, round(_SHADOW_REACH * unit)))
    extra = obj & ~near
    body_area = float((obj & near).sum())
    if extra.sum() < _SHADOW_AREA * body_area:
        return part
    labels, count = regions.label(extra)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=count + 1)[1:]
    mean = np.bincount(flat, weights=smooth.ravel(), minlength=count + 1)[1:] / np.maximum(area, 1)
    # texture: the darkness's departure from its own local mean, relative to the darkness
    rough = np.abs(smooth - _box_blur3(_box_blur3(smooth))).ravel()
    texture = np.bincount(flat, weights=rough, minlength=count + 1)[1:] / np.maximum(area, 1)
    ys = np.nonzero(obj)[0]
    row_sum = np.bincount(
        flat, weights=np.repeat(np.arange(part.shape[0]), part.shape[1]), minlength=count + 1
    )[1:]
    top, bottom = ys.min(), ys.max()
    position = (row_sum / np.maximum(area, 1) - top) / max(1, bottom - top)  # 0 top .. 1 bottom
    # a shadow falls beside the object too (offset, blurred); a sole or hem stays under it
    core_cols = np.flatnonzero(core.any(axis=0))
    margin = max(1.0, 0.5 * unit)
    beside_col = (np.arange(part.shape[1]) < core_cols[0] - margin) | (
        np.arange(part.shape[1]) > core_cols[-1] + margin
    )
    beside = np.bincount(
        flat, weights=np.tile(beside_col, part.shape[0]).astype(np.float64), minlength=count + 1
    )[1:] / np.maximum(area, 1)
    shadow = (
        (area >= _SHADOW_AREA * body_area)
        & (beside >= _SHADOW_BESIDE)
        & (texture - _NOISE_TEXTURE * sigma < _SHADOW_SMOOTH * mean)
        & (mean >= _SHADOW_DARK * level)
        & (mean < _SHADOW_FAINT * level)
        & (position > _SHADOW_LOW)
    )
    if not shadow.any():
        return part
    dropped = np.isin(labels, np.flatnonzero(shadow) + 1)
    # What is left of the shadow lies next to the body, within the shadow's reach and no
    # darker than it: cleared too, there only (an item's faint parts elsewhere stay).
    ceiling = _SHADOW_MARGIN * float(np.quantile(smooth[dropped], 0.98))
    ys, xs = np.nonzero(dropped)
    reach = max(1, round(_SHADOW_REACH * unit)) + 1
    y0, x0 = max(0, ys.min() - reach), max(0, xs.min() - reach)
    y1, x1 = ys.max() + 1 + reach, xs.max() + 1 + reach
    zone = np.zeros_like(dropped)
    zone[y0:y1, x0:x1] = True
    dropped |= zone & (smooth < ceiling)
    return np.where(dropped, 0.0, part).astype(np.float32)


def _crop(signed: np.ndarray, thr: float, lossy: bool, name: str) -> tuple[np.ndarray, tuple]:
    """The object's box in ``signed`` (sub-pixel edges), resampled to 28 px, sharpened, centred
    and stretched -> ((28, 28) uint8, box (x0, y0, x1, y1) in ``signed``'s pixels)."""
    frame = _frame(signed, thr, lossy, name)
    return _resample(frame, frame.box, name), frame.box


@dataclass(frozen=True)
class _Frame:
    """Where :func:`_crop` puts the object: what it resamples and how."""

    v: np.ndarray  # (H, W) float32: the object's darkness, >= 0
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) sub-pixel edges in ``v``
    size: tuple[int, int]  # (width, height) in the 28 px output, the longest 28
    enlarged: bool  # the box spans >= 2 input px per output px (then sharpened)
    thr: float  # what is object


def _frame(signed: np.ndarray, thr: float, lossy: bool, name: str) -> _Frame:
    h, w = signed.shape
    v = np.clip(signed, 0.0, None).astype(np.float32)
    mask = v > thr
    if not mask.any():
        raise _fail(name, "blank image (a single colour, no object)")
    x0, y0, x1, y1 = _bbox(mask)
    scale = max(x1 - x0, y1 - y0) / SIZE  # input px per output px
    prof = v
    if scale >= 2.0:
        blurred = _box_blur3(signed)
        prof = np.clip(blurred, 0.0, None).astype(np.float32)
        peak = float(prof.max())
        if lossy:
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
    return _Frame(v, (fx0, fy0, fx1, fy1), (tw, th), scale >= 2.0, thr)


def _resample(frame: _Frame, box: tuple[float, float, float, float], name: str) -> np.ndarray:
    """``frame.v`` within ``box`` (which may reach past its edges: zeros there) resampled to
    ``frame.size``, sharpened if enlarged, centred in 28x28 and stretched -> uint8."""
    tw, th = frame.size
    v = frame.v
    h, w = v.shape
    pad = int(np.ceil(max(0.0, -box[0], -box[1], box[2] - w, box[3] - h)))
    if pad:
        v = np.pad(v, pad)
        box = (box[0] + pad, box[1] + pad, box[2] + pad, box[3] + pad)
    fim = Image.fromarray(v)
    small = np.asarray(fim.resize((tw, th), _RESAMPLE, box=box), dtype=np.float32)
    # Contrast: the object's peak becomes 255. Taken at 4x the output resolution, where an
    # enlarged item keeps its peaks but JPEG noise is averaged out.
    mid = fim.resize((4 * tw, 4 * th), Image.Resampling.BOX, box=box)
    peak = float(np.asarray(mid).max())
    if frame.enlarged:  # undo part of the blur that enlarging then reducing causes
        p = np.pad(small, 1, mode="edge")
        lap = 4.0 * small - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        small = small + _SHARPEN * lap
    out = np.zeros((SIZE, SIZE), np.float32)
    oy, ox = (SIZE - th + 1) // 2, (SIZE - tw + 1) // 2  # odd pixel of margin: left / top
    out[oy : oy + th, ox : ox + tw] = np.clip(small, 0.0, None)
    if peak <= frame.thr:
        raise _fail(name, "blank image (a single colour, no object)")
    res = _stretch(out, peak)
    if not res.any():
        raise _fail(name, "blank image (a single colour, no object)")
    return res


def _views(
    signed: np.ndarray,
    thr: float,
    frame: _Frame,
    lossy: bool,
    name: str,
    pixels: np.ndarray,
    light_surface: bool,
) -> list[tuple[str, np.ndarray]]:
    """Other framings of the object in ``signed`` (above ``thr``) than ``frame``, the one
    :func:`_crop` found and ``pixels`` its view (see :func:`preprocess_views`): (name, (28, 28)
    uint8) each; one that comes out blank is left out. The views without a cast shadow only
    when the object lies on a ``light_surface`` (on a dark one a shadow does not show)."""
    out: list[tuple[str, np.ndarray]] = []

    def boxed(label: str, box: tuple[float, float, float, float]) -> None:
        with contextlib.suppress(InvalidImageError):
            out.append((label, _resample(frame, box, name)))

    def cropped(label: str, object_map: np.ndarray) -> None:
        with contextlib.suppress(InvalidImageError):
            out.append((label, _crop(object_map, thr, lossy, name)[0]))

    x0, y0, x1, y1 = frame.box
    unit = max(x1 - x0, y1 - y0) / SIZE  # input px per output px
    for step in _VIEW_SHIFT_STEPS:
        for dx, dy in _VIEW_SHIFTS:
            sx, sy = dx * step * unit, dy * step * unit
            boxed(
                f"shifted {dx * step:+.1f}, {dy * step:+.1f} px",
                (x0 + sx, y0 + sy, x1 + sx, y1 + sy),
            )
        if step == _VIEW_SHIFT_STEPS[0]:  # the nearest framings, lifted below
            nearest = [(AS_FOUND, pixels), *out]
    for grow in (-_VIEW_SCALE, _VIEW_SCALE):
        gx, gy = grow * (x1 - x0) / 2, grow * (y1 - y0) / 2
        boxed(f"{1 + grow:.0%} of its size", (x0 - gx, y0 - gy, x1 + gx, y1 + gy))
    for band in _VIEW_BANDS:
        for share in _VIEW_CUTS:
            label = f"faint base under {share:.0%} cut (lowest {band:.0%})"
            cropped(label, _cut_base(signed, thr, share, band))
    label = f"base trimmed to the width above it (lowest {_VIEW_TRIM_BAND:.0%})"
    cropped(label, _trim_base(signed, thr))
    for label, object_map in _shadowless_maps(signed, thr, unit) if light_surface else ():
        cropped(label, object_map)
    for degrees in (d * sign for d in _VIEW_TURNS for sign in (-1.0, 1.0)):
        turned = _turn(signed, degrees)
        cropped(f"turned {degrees:+.1f} deg", turned)
        for share in _VIEW_TURNED_CUTS.get(abs(degrees), ()):
            label = f"turned {degrees:+.1f} deg, faint base under {share:.0%} cut"
            cropped(label, _cut_base(turned, thr, share, _VIEW_BAND))
    for label, view in nearest:
        out.append((f"{label}, faint parts lifted", _LIFT_TABLE[view]))
    return out


def _shadowless_maps(
    signed: np.ndarray, thr: float, unit: float
) -> Iterator[tuple[str, np.ndarray]]:
    """(label, object map) of the views that leave a cast shadow out of the object in
    ``signed`` (above ``thr``; ``unit`` px per item pixel): see _VIEW_BODY, _RIM_FLAT, _CAST_GRID
    and _GAP_DEPTH."""
    smooth = _box_blur3(signed)
    obj = smooth > thr
    if not obj.any():
        return
    level = _level(smooth, obj)
    area = _RIM_AREA * unit * unit
    body = signed
    for share in _VIEW_BODY:
        body = signed * regions.fill_holes(smooth > share * level)
        yield f"its body without what is fainter than {share:.0%} around it", body
    rim = _shadow_rim(smooth, obj, level, unit)
    if rim.any():
        yield "without a faint rim that has no texture", np.where(rim, 0.0, signed)
    if rim.sum() >= area:
        unshadowed = _unshadow(signed, smooth, obj, rim, unit)
        yield "with a cast shadow divided out", unshadowed
        share = _VIEW_BODY[-1]  # and what is left of a shadow around its body cut
        core = _body_core(unshadowed, thr, share)
        if core is not None:
            yield f"with a cast shadow divided out, its body over {share:.0%}", unshadowed * core
    band = obj & (body <= 0.0)  # around the body (at the last share): a shadow's band, perhaps
    if band.sum() >= area:
        yield (
            "with the band around its body divided out",
            _unshadow(signed, smooth, obj, band, unit),
        )
    grid = _cast_grid(signed, unit)
    for share in _CAST_BODIES:
        shadow = _fit_cast_shadow(grid, share * level, signed.shape)
        if shadow is None:
            continue
        label = f"with its fitted cast shadow (fainter than {share:.0%}) divided out"
        fitted = _divided(signed, shadow, obj)
        yield label, fitted
        cut = _VIEW_BODY[0]  # and the faint rest of the shadow's edge cut
        core = _body_core(fitted, thr, cut)
        if core is not None:
            yield f"{label}, its body over {cut:.0%}", fitted * core
    under_gap = _cut_under_gap(smooth, obj, signed, unit)
    if under_gap is not None:
        yield "without the band under a gap at its base", under_gap


def _cut_under_gap(
    smooth: np.ndarray, obj: np.ndarray, signed: np.ndarray, unit: float
) -> np.ndarray | None:
    """``signed`` without the rows under a gap at the base of its object ``obj`` (``smooth``:
    ``signed`` box-blurred; ``unit`` px per item pixel), or None when there is none (see
    _GAP_DEPTH)."""
    _, top, _, end = _bbox(obj)
    bottom, height = end - 1, end - top
    start = top + int(_GAP_SEARCH * height)
    peak = np.where(obj[start:end], smooth[start:end], 0.0).max(axis=1)
    rim = np.minimum(np.maximum.accumulate(peak), np.maximum.accumulate(peak[::-1])[::-1])
    under = bottom - np.arange(start, bottom + 1)
    gaps = (peak <= _GAP_DEPTH * rim) & (under <= _GAP_BAND * height) & (under >= 2.0 * unit)
    if not gaps.any():
        return None
    depth = np.where(gaps, peak / np.maximum(rim, 1e-6), np.inf)
    out = signed.copy()
    out[start + int(np.argmin(depth)) :] = 0.0
    return out


def _body_core(object_map: np.ndarray, thr: float, share: float) -> np.ndarray | None:
    """(H, W) bool: where the object in ``object_map`` (above ``thr``, box-blurred) is darker
    than ``share`` of its level, holes filled; None when nothing is above ``thr``."""
    smooth = _box_blur3(object_map)
    obj = smooth > thr
    if not obj.any():
        return None
    return regions.fill_holes(smooth > share * _level(smooth, obj))


def _shadow_rim(smooth: np.ndarray, obj: np.ndarray, level: float, unit: float) -> np.ndarray:
    """(H, W) bool: the part of the object ``obj`` that a cast shadow would be (see _RIM_FLAT).

    ``smooth``: the object's map box-blurred, ``level`` its object level, ``unit`` the map's
    pixels per item pixel.
    """
    rough = _box(np.abs(smooth - _box(smooth, unit)), _RIM_WINDOW * unit)
    flat = obj & (rough < _RIM_FLAT * level) & (smooth < min(_RIM_FAINT * level, _RIM_LIGHT))
    labels, _ = regions.label(flat | ~obj)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0]) & obj


def _unshadow(
    signed: np.ndarray, smooth: np.ndarray, obj: np.ndarray, rim: np.ndarray, unit: float
) -> np.ndarray:
    """``signed`` without the cast shadow ``rim``, and with the shadow's darkness divided out
    where it goes on under the object (its faint parts let it show through).

    Under the object the shadow is unknown: it is continued smoothly (a membrane: the mean of
    its neighbours, on a grid of item pixels) from its darkness on the rim and 0 on the floor,
    then divided out (see :func:`_divided`).
    """
    h, w = signed.shape
    step = max(1, round(unit))
    gh, gw = -(-h // step), -(-w // step)
    known = (~obj | rim).astype(np.float32)
    weight = np.asarray(Image.fromarray(known).resize((gw, gh), Image.Resampling.BOX))
    shadow = np.where(rim, smooth, 0.0).astype(np.float32)
    total = np.asarray(Image.fromarray(shadow).resize((gw, gh), Image.Resampling.BOX))
    fixed = weight > 0.5
    grid = np.where(fixed, total / np.maximum(weight, 1e-6), 0.0).astype(np.float32)
    for _ in range(2 * max(gh, gw)):  # enough sweeps to reach across the object
        p = np.pad(grid, 1, mode="edge")
        grid = np.where(fixed, grid, (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))
    return _divided(signed, field, obj & ~rim)


def _divided(signed: np.ndarray, shadow: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The object's own darkness in ``signed`` (kept where ``keep``, 0 elsewhere) under a
    shadow of darkness ``shadow``: a shadow keeps a fraction (1 - s) of the light, so the
    object's own darkness is 1 - (1 - d) / (1 - s), in shares of 255."""
    light = 1.0 - np.clip(shadow, 0.0, _RIM_LIGHT) / 255.0
    own = 255.0 * (1.0 - (1.0 - signed / 255.0) / light)
    return np.where(keep, np.clip(own, 0.0, None), 0.0).astype(np.float32)


def _cast_grid(signed: np.ndarray, unit: float) -> np.ndarray:
    """``signed`` box-reduced to _CAST_GRID cells per item pixel (``unit`` px each)."""
    h, w = signed.shape
    step = max(1, round(unit / _CAST_GRID))
    gh, gw = -(-h // step), -(-w // step)
    return np.asarray(
        Image.fromarray(np.asarray(signed, np.float32)).resize((gw, gh), Image.Resampling.BOX)
    )


def _fit_cast_shadow(
    grid: np.ndarray, body_level: float, shape: tuple[int, int]
) -> np.ndarray | None:
    """``shape`` (H, W) float32: the darkness of a lamp's shadow fitted to the object in
    ``grid`` (its map on the grid of :func:`_cast_grid`) around its body (what is darker than
    ``body_level``), or None when no silhouette fits."""
    h, w = shape
    body = regions.fill_holes(grid > body_level)
    if not body.any():
        return None
    floor = np.where(body, 0.0, np.maximum(grid, 0.0))  # what lies outside the body
    silhouette = _cast_silhouette(floor, body)
    if silhouette is None:
        return None
    outside = ~body
    fits = []  # (what it leaves unexplained, window, darkness) per blur
    for window in _CAST_BLURS:
        blurred = _box(silhouette, window) * outside
        depth = float((floor * blurred).sum() / max(float((blurred**2).sum()), 1e-9))
        fits.append((float((((floor - depth * blurred) * outside) ** 2).sum()), window, depth))
    _, window, depth = min(fits, key=lambda fit: fit[0])
    if depth <= 0.0:
        return None
    shadow = depth * _box(silhouette, window)
    return np.asarray(Image.fromarray(shadow).resize((w, h), Image.Resampling.BILINEAR))


def _cast_silhouette(floor: np.ndarray, body: np.ndarray) -> np.ndarray | None:
    """(h, w) float32 0/1: the moved or flattened silhouette of ``body`` (bool) that best
    explains the darkness ``floor`` around it (see _CAST_GRID), or None."""
    gh, gw = body.shape
    solid = body.astype(np.float64)
    area = solid.sum()
    # Every shift t at once: meets[t] = sum floor(x) body(x - t), the darkness the moved body
    # covers, and out[t] its area off the body (the body's area less its overlap with itself).
    shape = (2 * gh, 2 * gw)
    f_floor, f_body = np.fft.rfft2(floor, shape), np.fft.rfft2(solid, shape)
    meets = np.fft.irfft2(f_floor * np.conj(f_body), shape)
    out = area - np.fft.irfft2(f_body * np.conj(f_body), shape)  # its area off the body
    ty = np.fft.fftfreq(shape[0], 1.0 / shape[0])[:, None]
    tx = np.fft.fftfreq(shape[1], 1.0 / shape[1])[None, :]
    near = _CAST_NEAR * _CAST_GRID
    fits = (out > _CAST_OUTSIDE * area) & ((np.abs(ty) >= near) | (np.abs(tx) >= near))
    score = np.where(fits, np.maximum(meets, 0.0) ** 2 / np.maximum(out, 1e-9), 0.0)
    at = np.unravel_index(int(np.argmax(score)), score.shape)
    best, dy, dx = float(score[at]), int(ty[at[0], 0]), int(tx[0, at[1]])
    silhouette = np.zeros((gh, gw), np.float32)
    if best > 0.0:
        silhouette[max(0, dy) : gh + min(0, dy), max(0, dx) : gw + min(0, dx)] = body[
            max(0, -dy) : gh - max(0, dy), max(0, -dx) : gw - max(0, dx)
        ]
    # Flattened about the base row, behind it (rows above) or in front (rows below), slanted.
    base = int(np.flatnonzero(body.any(axis=1))[-1])
    rows = np.arange(gh, dtype=np.float64)[:, None]
    cols = np.arange(gw, dtype=np.float64)[None, :]
    slants = np.asarray(_CAST_SLANT)[:, None, None]
    for side in (-1.0, 1.0):
        height = side * (rows - base)  # each row's distance from the base on the shadow's side
        for squash in _CAST_SQUASH:
            sy = np.rint(base - height / squash).astype(np.intp)
            sx = np.rint(cols - slants * height).astype(np.intp)
            inside = (height >= 0) & (sy >= 0) & (sy < gh) & (sx >= 0) & (sx < gw)
            cast = np.where(inside, body[np.clip(sy, 0, gh - 1), np.clip(sx, 0, gw - 1)], False)
            off = (cast & ~body).sum(axis=(1, 2)).astype(np.float64)
            meet = (floor * cast).sum(axis=(1, 2))
            score = np.where(
                off >= _CAST_OUTSIDE * area, np.maximum(meet, 0.0) ** 2 / np.maximum(off, 1e-9), 0.0
            )
            i = int(np.argmax(score))
            if score[i] > best:
                best = float(score[i])
                silhouette = cast[i].astype(np.float32)
    return silhouette if best > 0.0 else None


def _turn(signed: np.ndarray, degrees: float) -> np.ndarray:
    """``signed`` turned counter-clockwise by ``degrees`` about its centre, grown to hold it."""
    image = Image.fromarray(np.asarray(signed, np.float32))
    return np.asarray(image.rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=0.0))


def _cut_base(signed: np.ndarray, thr: float, share: float, band: float) -> np.ndarray:
    """``signed`` without what is fainter than ``share`` of the object's level in its bottom
    ``band`` (a share of its height): where a floor shadow joins an object at its base."""
    mask = signed > thr
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return signed
    level = _level(signed, mask)
    top = int(rows[0] + (1.0 - band) * (rows[-1] - rows[0]))
    out = np.array(signed, np.float32)
    low = out[top:]
    low[low < share * level] = 0.0
    return out


def _trim_base(signed: np.ndarray, thr: float) -> np.ndarray:
    """``signed`` without what lies, in the object's bottom band, beside the object's width
    just above that band (see _VIEW_TRIM_BAND): a floor shadow cast sideways at its base."""
    mask = signed > thr
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return signed
    height = rows[-1] - rows[0]
    top = int(rows[0] + (1.0 - _VIEW_TRIM_BAND) * height)
    above = mask[max(rows[0], top - max(2, int(_VIEW_TRIM_ABOVE * height))) : top]
    cols = np.flatnonzero(above.any(axis=0))
    if not len(cols):
        return signed
    margin = max(1, int(_VIEW_TRIM_MARGIN * signed.shape[1]))
    out = np.array(signed, np.float32)
    out[top:, : max(int(cols[0]) - margin, 0)] = 0.0
    out[top:, int(cols[-1]) + margin + 1 :] = 0.0
    return out


def _steps(
    scene: _Scene, tilt: float, to_analysis: np.ndarray, box: tuple, pixels: np.ndarray
) -> Steps:
    c = scene.image.shape[2]
    image = scene.image if c == 3 else np.repeat(scene.image, 3, axis=2)
    ah, aw = scene.mask.shape
    bg = _grid_surface(scene.coef, ah, aw)
    if c == 1:
        bg = np.repeat(bg, 3, axis=2)
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    corners = corners @ to_analysis[:, :2].T + to_analysis[:, 2]
    return Steps(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        background=np.clip(np.rint(bg), 0, 255).astype(np.uint8),
        mask=scene.mask.copy(),
        noise=float(scene.noise),
        dark_object=scene.dark_object,
        shade=float(scene.shade),
        tilt=float(tilt),
        box=corners,
        pixels=pixels.copy(),
    )


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
