"""Classical codec backends and the codec registry, through their public interfaces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data as skdata

from gateway.codec import bitstream
from gateway.codec.base import Knobs
from gateway.codec.classical import CLASSICAL_CODECS
from gateway.codec.image_io import resize_rgb
from gateway.codec.registry import available_codecs, codec_name_for, decode_any, make_codec
from gateway.errors import BitstreamError, ChecksumMismatch, CodecError, ConfigError

NAMES = sorted(CLASSICAL_CODECS)


def gradient_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps plus a little noise: compresses like a photo, needs no data files."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 60 * np.sin(x / 7 + y / 11)], axis=-1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def encode(name: str, image: np.ndarray, quality: int, scale_code: int = 0) -> bytes:
    codec = make_codec(name)
    w, h = image.shape[1], image.shape[0]
    small = resize_rgb(image, bitstream.scaled_size(w, h, scale_code))
    return codec.encode(codec.analyze(small), Knobs(quality, 0, scale_code), (w, h))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-9))


ASTRONAUT = resize_rgb(skdata.astronaut(), (128, 128))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image", [gradient_image(61, 37), ASTRONAUT], ids=["gradient", "astronaut"])
def test_round_trip_restores_size_and_content(name: str, image: np.ndarray) -> None:
    data = encode(name, image, quality=90)
    out = make_codec(name).decode(data)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert psnr(out, image) > 28


@pytest.mark.parametrize("name", NAMES)
def test_downscaled_round_trip_comes_back_at_original_size(name: str) -> None:
    image = gradient_image(90, 50)
    data = encode(name, image, quality=80, scale_code=8)
    header, _ = bitstream.unpack(data)
    assert header.coded_size == (45, 25)
    out = decode_any(data)
    assert out.shape == image.shape
    assert psnr(out, image) > 20


@pytest.mark.parametrize("name", NAMES)
def test_header_fields(name: str) -> None:
    image = gradient_image(40, 30)
    data = encode(name, image, quality=42, scale_code=4)
    header, payload = bitstream.unpack(data)
    assert header.codec_id == bitstream.CODEC_IDS[name]
    assert header.codec_name == name == codec_name_for(data)
    assert (header.width, header.height) == (40, 30)
    assert (header.scale_code, header.lam_code, header.delta_code, header.model_id) == (4, 42, 0, 0)
    assert header.version == bitstream.VERSION == 2
    assert header.checksum == bitstream.crc16(data[:10] + payload), "v2 covers the header fields and the payload"


@pytest.mark.parametrize("name", NAMES)
def test_lower_quality_gives_fewer_bytes(name: str) -> None:
    image = ASTRONAUT
    assert len(encode(name, image, 10)) < len(encode(name, image, 60)) < len(encode(name, image, 95))


def test_optional_bytes_are_stripped() -> None:
    image = gradient_image(32, 32)
    jpeg_payload = bitstream.unpack(encode("jpeg", image, 50))[1]
    assert b"JFIF" not in jpeg_payload and jpeg_payload[:2] == b"\xff\xd8"
    webp_payload = bitstream.unpack(encode("webp", image, 50))[1]
    assert b"RIFF" not in webp_payload[:4]
    jxl_payload = bitstream.unpack(encode("jxl", image, 50))[1]
    assert jxl_payload[:2] == b"\xff\x0a"  # naked codestream, no container box
    # The deflated AVIF container costs a few dozen bytes, not libavif's ~275.
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "AVIF", quality=0, speed=8)
    assert len(encode("avif", image, 0)) < len(buf.getvalue()) - 150


@pytest.mark.parametrize("name", NAMES)
def test_checksum_mismatch_is_detected(name: str) -> None:
    data = bytearray(encode(name, gradient_image(24, 24), 50))
    data[-3] ^= 0x40
    with pytest.raises(ChecksumMismatch):
        make_codec(name).decode(bytes(data))


@pytest.mark.parametrize("name", NAMES)
def test_header_fields_are_covered_by_the_checksum(name: str) -> None:
    """A flipped bit in the size, scale or quality fields is caught (v2), not decoded to another picture."""
    data = encode(name, gradient_image(24, 24), 50)
    for offset in (3, 5, 7, 8):
        bad = bytearray(data)
        bad[offset] ^= 0x01
        with pytest.raises(BitstreamError):
            make_codec(name).decode(bytes(bad))


@pytest.mark.parametrize("name", NAMES)
def test_version_1_streams_still_decode(name: str) -> None:
    """v1's checksum covered the payload only; such streams still decode."""
    header, payload = bitstream.unpack(encode(name, gradient_image(24, 24), 50))
    old = bitstream.Header(header.codec_id, 0, 24, 24, 0, 50, 0, 0, version=1).with_checksum(payload)
    assert old.checksum == bitstream.crc16(payload)
    data = bitstream.pack(old, payload)
    assert data[0] >> 4 == 1
    assert make_codec(name).decode(data).shape == (24, 24, 3)


@pytest.mark.parametrize("name", NAMES)
def test_payload_larger_than_header_says_is_refused(name: str) -> None:
    """A payload holding a bigger image than the header's size is refused before decoding it."""
    big = encode(name, gradient_image(300, 200), 30)
    header, payload = bitstream.unpack(big)
    forged = bitstream.Header(header.codec_id, 0, 30, 20, 0, 30, 0, 0).with_checksum(payload)
    with pytest.raises(BitstreamError, match="header says 30x20"):
        make_codec(name).decode(bitstream.pack(forged, payload))


def test_bitstream_of_another_codec_is_refused() -> None:
    data = encode("jpeg", gradient_image(16, 16), 50)
    with pytest.raises(BitstreamError, match="jpeg"):
        make_codec("webp").decode(data)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=600), width=st.integers(1, 300), height=st.integers(1, 300))
def test_hostile_payload_raises_only_bitstream_error(name: str, blob: bytes, width: int, height: int) -> None:
    """Garbage with a valid header and checksum reaches Pillow; only BitstreamError may come out."""
    header = bitstream.Header(bitstream.CODEC_IDS[name], 0, width, height, 0, 50, 0, 0).with_checksum(blob)
    with pytest.raises(BitstreamError):
        make_codec(name).decode(bitstream.pack(header, blob))


_VALID = {name: encode(name, gradient_image(40, 28), 40) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_corrupted_bitstream_decodes_or_raises_bitstream_error(name: str, data: st.DataObject) -> None:
    """Flipped, cut or extended payloads (checksum fixed up so the codec sees them) never escape BitstreamError."""
    header, payload = bitstream.unpack(_VALID[name])
    body = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 8))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    body = body[: data.draw(st.integers(0, len(body)))] + data.draw(st.binary(max_size=20))
    fixed = bitstream.Header(header.codec_id, 0, 40, 28, 0, 40, 0, 0).with_checksum(bytes(body))
    try:
        out = make_codec(name).decode(bitstream.pack(fixed, bytes(body)))
    except BitstreamError:
        return
    assert out.shape == (28, 40, 3)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=64))
def test_decode_any_on_random_bytes_raises_only_bitstream_error(blob: bytes) -> None:
    try:
        out = decode_any(blob)
    except BitstreamError:
        return
    assert out.ndim == 3  # a random blob that happens to be a valid image is fine too


def test_registry_names_and_errors() -> None:
    assert set(NAMES) <= set(available_codecs())
    for name in NAMES:
        assert make_codec(name).name == name
        assert make_codec(name.upper(), bundle="ignored/for/classical").name == name
    with pytest.raises(ConfigError, match="valid codecs: cadc, avif, jxl, webp, jpeg"):
        make_codec("png")
    with pytest.raises(ConfigError, match="speed"):
        make_codec("avif", sped=3)


def test_decode_any_caches_codecs_in_the_dict_given() -> None:
    cache: dict = {}
    for name in ("jpeg", "webp"):
        decode_any(_VALID[name], cache)
    assert sorted(cache) == ["jpeg", "webp"]
    jpeg = cache["jpeg"]
    decode_any(_VALID["jpeg"], cache)
    assert cache["jpeg"] is jpeg


def test_analyze_rejects_non_rgb_arrays() -> None:
    codec = make_codec("jpeg")
    with pytest.raises(CodecError, match="HxWx3 uint8"):
        codec.analyze(np.zeros((8, 8), np.uint8))
    with pytest.raises(CodecError, match="HxWx3 uint8"):
        codec.analyze(np.zeros((8, 8, 3), np.float32))


def test_encode_rejects_analysis_of_the_wrong_size() -> None:
    codec = make_codec("webp")
    with pytest.raises(CodecError, match="scaled_size"):
        codec.encode(codec.analyze(gradient_image(20, 20)), Knobs(50, 0, 8), (20, 20))
