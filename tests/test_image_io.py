"""The codec room's image I/O: reading with a pixel limit, the one resizer, PNG, the one atomic writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gateway.codec.base import Codec, Knobs
from gateway.codec.image_io import as_rgb_array, png_bytes, read_rgb, resize_rgb, write_atomic
from gateway.codec.registry import make_codec
from gateway.errors import CodecError, RequestError


def test_png_round_trip_and_pixel_limit() -> None:
    img = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    data = png_bytes(img)
    assert np.array_equal(read_rgb(data), img)
    assert np.array_equal(read_rgb(data, max_pixels=1200), img)
    with pytest.raises(RequestError, match="40x30 = 1200 pixels, above the limit of 1199"):
        read_rgb(data, max_pixels=1199)


def test_resize_is_lanczos_and_a_no_op_at_the_same_size() -> None:
    img = (np.random.default_rng(0).integers(0, 256, (64, 48, 3))).astype(np.uint8)
    assert resize_rgb(img, (48, 64)) is img
    expected = np.asarray(Image.fromarray(img).resize((24, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(resize_rgb(img, (24, 32)), expected)


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "1.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["1.json"]
    assert target.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_capabilities_are_declared_with_defaults() -> None:
    assert (Codec.fast_decode, Codec.predicts_bytes, Codec.estimates_distortion, Codec.rate_anchor_delta_code) == (
        False, False, False, None)
    webp = make_codec("webp")
    assert webp.fast_decode and not webp.predicts_bytes and webp.rate_anchor_delta_code is None
    img = np.full((16, 16, 3), 128, np.uint8)
    data = webp.encode(webp.analyze(img), Knobs(50), (16, 16))
    decoded, info = webp.decode_with_info(data)
    assert np.array_equal(decoded, webp.decode(data)) and info == {}
    with pytest.raises(CodecError):
        as_rgb_array(np.zeros((4, 4), np.uint8))
