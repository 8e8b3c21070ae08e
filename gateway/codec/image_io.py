"""Images in and out: RGB arrays, the one resizer, PNG, and the one atomic file writer.

Every part of satgw that turns bytes into pixels or pixels into files goes
through here, so an image is read with one size check, resized with one
filter, and written durably one way (temp file, fsync, rename, directory
fsync: after a crash either the old file or the whole new one is there).
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

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


def read_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode image file bytes (any format Pillow reads) to an RGB uint8 array.

    An image above ``max_pixels`` is refused (:class:`RequestError`) from its
    header, before any pixel is decoded. Unreadable bytes raise Pillow's
    ``UnidentifiedImageError`` (an ``OSError``).
    """
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise RequestError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} pixels")
        return np.asarray(im.convert("RGB"))


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
