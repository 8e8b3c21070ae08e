"""Images in and out: RGB arrays, the one resizer, PNG, and the one atomic file writer.

Every part of satgw that turns bytes into pixels or pixels into files goes
through here, so an image is read with one size check, resized with one
filter, and written durably one way (temp file, fsync, rename, directory
fsync: after a crash either the old file or the whole new one is there).

Reading refuses what it cannot take with a :class:`~gateway.errors.RequestError`
whose message is a sentence for the person who sent the file (not an
image, truncated, too many pixels), checks the size from the header before
any pixel is decoded, and brings every mode to 8-bit RGB with the right
scaling (16-bit and 32-bit greyscale are scaled down, not clipped to white).
"""

from __future__ import annotations

import io
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gateway.errors import CodecError, RequestError


def as_rgb_array(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is an HxWx3 uint8 array and return it contiguous."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise CodecError(
            f"expected an HxWx3 uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}; "
            "convert it with PIL.Image.convert('RGB') first"
        )
    return np.ascontiguousarray(arr)


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """Open image bytes and check the size from the header; RequestError with a sentence when refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RequestError("the file is not an image in a format this sender reads (JPEG, PNG, WebP, AVIF, "
                           "TIFF, ...)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise RequestError(f"the image declares an absurd size ({e}); it looks like a decompression bomb") from None
    except Exception as e:  # Pillow raises many types on damaged headers
        raise RequestError(f"the image header cannot be read ({type(e).__name__}: {e})") from None
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise RequestError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} pixels")
    return im


def _decoded(im: Image.Image) -> Image.Image:
    """Decode every pixel of ``im`` (in place); RequestError with a sentence when the data is damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise RequestError(f"the image looks like a decompression bomb ({e})") from None
    except Exception as e:  # truncated data, bad chunks, broken entropy coding: all mean "damaged"
        raise RequestError(
            f"the image is truncated or damaged and cannot be decoded ({type(e).__name__}: {e})"
        ) from None
    return im


def to_rgb8(im: Image.Image) -> np.ndarray:
    """``im`` as HxWx3 uint8: 16/32-bit greyscale scaled to 8 bits, floats from 0..1, the other modes converted."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples (I;16*, and PNG/TIFF 16-bit greyscale read as I): 65535 is white.
        grey = np.asarray(im, dtype=np.float64)
        grey = np.rint(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "F":
        f = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if f.size and float(f.max()) <= 1.0 else 1.0  # 0..1 floats, or already 0..255
        grey = np.rint(np.clip(f * scale, 0, 255)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(im.convert("RGB"))


def probe_image(data: bytes, max_pixels: int | None = None) -> tuple[int, int]:
    """Check that ``data`` is a whole image of at most ``max_pixels`` and return its (width, height).

    The size is checked from the header before decoding; then every pixel is
    decoded once (JPEGs at reduced scale, which still reads all their data),
    so truncated and damaged files are refused at once with a RequestError.
    """
    with _open(data, max_pixels) as im:
        size = im.size
        if im.format == "JPEG":
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        _decoded(im)
        return size


def read_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode image file bytes (any format Pillow reads) to an RGB uint8 array (:func:`to_rgb8`).

    An image above ``max_pixels`` is refused (:class:`RequestError`) from its
    header, before any pixel is decoded; so are bytes that are not an image,
    and damaged or truncated images (each with a sentence saying which).
    """
    with _open(data, max_pixels) as im:
        return to_rgb8(_decoded(im))


def resize_rgb(image: np.ndarray, size: tuple[int, int], *, reducing_gap: float | None = None) -> np.ndarray:
    """``image`` resized to ``size`` = (width, height) with Lanczos (a no-op at the same size).

    ``reducing_gap`` lets Pillow box-reduce first on big downscales: the same
    look as plain Lanczos, far faster on big photos (the rate controller uses
    3.0); None is exact Lanczos (what decoders use to restore the original size).
    """
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap))


def box_downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` averaged down to ``size`` (box filter): for measuring distortion, not for display."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB array as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably and atomically: temp file beside it, fsync, rename, directory fsync.

    Readers see the old file or the whole new one, never a torn one, and the
    new one survives a power cut once this returns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
