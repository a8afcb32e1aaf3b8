"""Load any image a user or a data set can throw at us as an RGB PIL image, or fail with a clear message.

Handles EXIF orientation, grayscale, palette and alpha images (composited on white), 16-bit and
32-bit integer and float images, CMYK, animated images (first frame) and numpy arrays. Decompression
bombs are refused from the header, before any pixel is decoded, without touching PIL's global
``Image.MAX_IMAGE_PIXELS``; huge-but-allowed images are downscaled so their longer side is at most
``max_side`` and keep their original size in ``image.info["spml_downscaled_from"]``.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
MAX_SIDE = 4096
DOWNSCALED_KEY = "spml_downscaled_from"
# The file types a data set, an upload or an importer takes for images (what load_image decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_EXIF_ORIENTATION = 0x0112
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # these swap width and height
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
# What PIL's decoders and EXIF parser raise on broken data (they do not share one exception type).
_BROKEN_DATA_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
)

ImageSource = str | Path | Image.Image | np.ndarray | bytes


class ImageLoadError(ValueError):
    """An image cannot be used; the message says which one and why."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes of image data>"
    if isinstance(source, np.ndarray):
        return f"<array of shape {source.shape}, {source.dtype}>"
    return f"<PIL image {source.size[0]}x{source.size[1]} {source.mode}>"


def _to_uint8(values: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Map integer or float pixel values to uint8 by the range they evidently use."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    data = values.astype(np.float64)
    data[~np.isfinite(data)] = 0.0
    if sixteen_bit or values.dtype == np.uint16:
        return np.clip(np.rint(data / 257.0), 0, 255).astype(np.uint8)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if np.issubdtype(values.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        data = data * 255.0  # floats in [0, 1], the usual convention
    elif low < 0.0 or high > 255.0:
        if low >= 0.0 and high <= 65535.0:
            data = data / 257.0  # a 16-bit range stored in a wider type (PIL mode "I")
        else:
            data = (data - low) * (255.0 / max(high - low, 1e-12))  # unknown range: stretch it
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(image), sixteen_bit=mode in _SIXTEEN_BIT_MODES)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        return _composite_on_white(image.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _composite_on_white(image)
    return image.convert("RGB")  # "1", "L", "P", "CMYK", "YCbCr", ...


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(_to_uint8(array)), mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        pixels = np.ascontiguousarray(_to_uint8(array))
        if array.shape[2] == 3:
            return Image.fromarray(pixels, mode="RGB")
        return _composite_on_white(Image.fromarray(pixels, mode="RGBA"))
    raise ImageLoadError(f"{name}: expected an HxW or HxWxC array with C in 1, 3, 4 (channels last)")


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: {width}x{height} = {width * height:,} pixels is more than the {max_pixels:,} allowed "
            "(refused as a possible decompression bomb)"
        )


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    if isinstance(source, bytes):
        handle: io.BytesIO | Path = io.BytesIO(source)
    else:
        handle = Path(source)
        if not handle.exists():
            raise ImageLoadError(f"{name}: no such file")
        if not handle.is_file():
            raise ImageLoadError(f"{name}: not a file")
    try:
        return Image.open(handle)  # lazy: reads the header only, so the size can be checked first
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({error})") from None
    except OSError as error:
        raise ImageLoadError(f"{name}: cannot be read ({error})") from None


def _decode(image: Image.Image, name: str, max_side: int) -> tuple[Image.Image, int]:
    """Decode the pixels (the first frame of an animation); returns the image and its EXIF orientation."""
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _BROKEN_DATA_ERRORS:  # malformed EXIF: keep the pixels as stored
        orientation = 1
    longest = max(image.size)
    if longest > max_side:
        # For JPEG this decodes at a reduced DCT scale, still at least max_side on the longer side.
        scale = max_side / longest
        image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({error})") from None
    except _BROKEN_DATA_ERRORS as error:
        raise ImageLoadError(f"{name}: truncated or corrupt image data ({error!r})") from None
    if orientation != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except _BROKEN_DATA_ERRORS:  # malformed EXIF: keep the pixels as stored
            orientation = 1
    return image, orientation


def _from_pil(opened: Image.Image, name: str, max_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode and convert an opened image; returns it with its full-resolution upright size."""
    stored = opened.size
    image, orientation = _decode(opened, name, max_side)
    # Displayed size: the stored one, swapped when the EXIF orientation rotates by 90 degrees.
    upright = (stored[1], stored[0]) if orientation in _ROTATING_ORIENTATIONS else stored
    return _to_rgb(image), upright


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> Image.Image:
    """Return ``source`` as a fully decoded RGB PIL image, upright per its EXIF orientation.

    ``source`` is a path, encoded bytes, a PIL image or an HxW / HxWx{1,3,4} array (uint8, uint16,
    bool or float in [0, 1] or [0, 255]). Images over ``max_pixels`` are refused before decoding;
    images whose longer side exceeds ``max_side`` are downscaled and record their original upright
    (width, height) in ``info["spml_downscaled_from"]``. A caller's PIL image is never modified.
    Raises :class:`ImageLoadError` naming the source and the problem.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise ImageLoadError(f"{name}: expected an HxW or HxWxC array")
        _check_size((source.shape[1], source.shape[0]), max_pixels, name)
        image = _from_array(source, name)
        upright = image.size
    elif isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, name)
        try:
            opened = source.copy()  # draft() and load() work in place: never on the caller's image
        except _BROKEN_DATA_ERRORS as error:  # copy() decodes a lazily opened image: same failures as load()
            raise ImageLoadError(f"{name}: truncated or corrupt image data ({error})") from None
        image, upright = _from_pil(opened, name, max_side)
    else:
        with _open(source, name) as opened:  # closes the file, also for animations PIL keeps open
            _check_size(opened.size, max_pixels, name)
            image, upright = _from_pil(opened, name, max_side)
    if max(upright) > max_side:
        image = _downscale(image, max_side)
        image.info[DOWNSCALED_KEY] = upright
    return image


def original_size(image: Image.Image) -> tuple[int, int]:
    """The upright (width, height) of an image from :func:`load_image` before the side cap shrank it."""
    return tuple(image.info.get(DOWNSCALED_KEY, image.size))


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return image  # the JPEG draft mode already decoded it small enough
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
