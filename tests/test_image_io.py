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


def test_sixteen_bit_and_float_greyscale_are_scaled_not_clipped() -> None:
    import io

    ramp = (np.arange(64 * 4).reshape(4, 64) * 256).astype(np.uint16)  # 0 .. 65280
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    rgb = read_rgb(buf.getvalue())
    assert rgb.shape == (4, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.rint(ramp / 257).astype(np.uint8))  # before: all 255 past 255
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    buf = io.BytesIO()
    Image.fromarray((ramp / 65535).astype(np.float32)).save(buf, "TIFF")
    assert abs(int(read_rgb(buf.getvalue())[3, 63, 1]) - 254) <= 1


def test_unreadable_truncated_and_bomb_files_are_refused_with_sentences() -> None:
    from gateway.codec.image_io import probe_image

    img = (np.random.default_rng(1).integers(0, 256, (64, 64, 3))).astype(np.uint8)
    png = png_bytes(img)
    assert probe_image(png, 64 * 64) == (64, 64)
    for data, words in (
        (b"plain text, not a picture", "not an image"),
        (png[: len(png) // 2], "truncated or damaged"),
    ):
        for reader in (probe_image, read_rgb):
            with pytest.raises(RequestError, match=words) as e:
                reader(data)
            assert "BytesIO" not in str(e.value)  # before: "cannot identify image file <_io.BytesIO object at 0x...>"
    bomb = Image.new("L", (6000, 6000))  # 36 MP of zeros: a few kB of PNG
    buf = __import__("io").BytesIO()
    bomb.save(buf, "PNG")
    with pytest.raises(RequestError, match="6000x6000 = 36000000 pixels, above the limit"):
        probe_image(buf.getvalue(), 32_000_000)  # refused from the header: nothing decoded
