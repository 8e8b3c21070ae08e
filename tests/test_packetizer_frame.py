"""Frame layer: exact size, round trips, corruption detection, authentication, garbage."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packetizer.errors import (
    AuthError,
    BadMagic,
    BadVersion,
    CRCError,
    FrameError,
    FrameSizeError,
    HeaderError,
    PacketizerError,
)
from packetizer.frame import CRC_SIZE, HEADER_SIZE, OVERHEAD, Frame, FrameCodec, FrameType, crc32c

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frame_sizes = st.integers(min_value=64, max_value=9000)


def reseal(data: bytearray) -> bytes:
    """Recompute the CRC of a hand-edited frame, so that only the edit is wrong."""
    data[-CRC_SIZE:] = crc32c(bytes(data[:-CRC_SIZE])).to_bytes(CRC_SIZE, "little")
    return bytes(data)


@st.composite
def frames(draw, codec: FrameCodec | None = None):
    """Any frame that a codec accepts, of any type."""
    if codec is None:
        codec = FrameCodec(draw(frame_sizes))
    cap = codec.payload_capacity
    kind = draw(st.sampled_from(list(FrameType)))
    mid = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    if kind == FrameType.DATA:
        k = draw(st.integers(1, 65535))
        n = draw(st.one_of(st.just(k), st.integers(k, max(k, 256)))) if k < 256 else k
        frame = Frame(kind, mid, draw(st.integers(0, k - 1)), k, n, rnd.randbytes(draw(st.integers(0, cap))))
    elif kind == FrameType.PARITY:
        k = draw(st.integers(1, 255))
        n = draw(st.integers(k + 1, 256))
        frame = Frame(kind, mid, draw(st.integers(k, n - 1)), k, n, rnd.randbytes(cap), draw(st.integers(0, cap)))
    else:
        u16 = st.integers(0, 65535)
        frame = Frame(kind, mid, draw(u16), draw(u16), draw(u16), rnd.randbytes(draw(st.integers(0, cap))))
    return codec, frame


def test_default_codec_overhead_is_18_bytes() -> None:
    codec = FrameCodec()
    assert codec.frame_size == 450
    assert OVERHEAD == HEADER_SIZE + CRC_SIZE == 18
    assert codec.payload_capacity == 432
    assert FrameCodec(auth_key=b"k", tag_len=8).payload_capacity == 416  # + 8-byte tag, 8-byte replay stamp


@FAST
@given(frames())
def test_any_valid_frame_round_trips_at_exact_size(case) -> None:
    codec, frame = case
    wire = codec.pack(frame)
    assert len(wire) == codec.frame_size
    assert codec.unpack(wire) == frame


@FAST
@given(frame_sizes, st.binary(max_size=64), st.integers(4, 32))
def test_authenticated_frames_round_trip(size: int, key: bytes, tag_len: int) -> None:
    codec = FrameCodec(size, auth_key=key or b"\0", tag_len=tag_len)
    frame = Frame(FrameType.META, 9, 0, 1, 1, bytes(range(min(200, codec.payload_capacity))))
    wire = codec.pack(frame)
    assert len(wire) == size
    assert codec.unpack(wire) == frame


def test_every_single_bit_flip_is_detected() -> None:
    for codec in (FrameCodec(), FrameCodec(auth_key=b"secret")):
        wire = codec.pack(Frame(FrameType.DATA, 1234, 3, 10, 12, random.Random(1).randbytes(300)))
        for bit in range(len(wire) * 8):
            bad = bytearray(wire)
            bad[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(FrameError):
                codec.unpack(bytes(bad))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 450 * 8 - 1), st.integers(1, 32), st.integers(0, 2**32 - 1))
def test_any_burst_of_up_to_32_bits_is_detected(seed: int, start: int, length: int, pattern: int) -> None:
    # Bits are numbered in transmission order, LSB first within a byte, which
    # is the order the reflected CRC-32C sees them in (and a serial link sends them).
    codec = FrameCodec()
    rnd = random.Random(seed)
    wire = codec.pack(Frame(FrameType.DATA, rnd.getrandbits(32), 0, 1, 1, rnd.randbytes(rnd.randint(0, 432))))
    length = min(length, 450 * 8 - start)
    flips = (pattern & ((1 << length) - 1)) | 1 | (1 << (length - 1))  # a burst starts and ends with a flip
    bad = bytearray(wire)
    for offset in range(length):
        if flips >> offset & 1:
            bit = start + offset
            bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        codec.unpack(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_raise_only_frame_errors(data: bytes) -> None:
    codec = FrameCodec()
    for candidate in (data, data[:450].ljust(450, b"\0"), b"\xa5\x20" + data[:448].ljust(448, b"\1")):
        try:
            frame = codec.unpack(candidate)
        except FrameError:
            continue
        assert len(candidate) == 450 and isinstance(frame, Frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=446, max_size=446))
def test_random_bytes_with_a_valid_crc_raise_only_frame_errors(body: bytes) -> None:
    # A correct CRC gets garbage past the integrity check into header validation.
    codec = FrameCodec()
    wire = reseal(bytearray(b"\xa5" + bytes([0x20 | (body[0] & 0x07)]) + body[2:] + bytes(4)))
    try:
        frame = codec.unpack(wire)
    except FrameError:
        return
    assert codec.pack(frame) == wire


def test_wrong_size_magic_version_and_type_are_rejected_cleanly() -> None:
    codec = FrameCodec()
    wire = codec.pack(Frame(FrameType.DATA, 1, 0, 1, 1, b"hello"))
    with pytest.raises(FrameSizeError):
        codec.unpack(wire[:-1])
    with pytest.raises(FrameSizeError):
        codec.unpack(wire + b"\0")
    with pytest.raises(FrameSizeError):
        codec.unpack("not bytes")  # type: ignore[arg-type]
    with pytest.raises(BadMagic):
        codec.unpack(reseal(bytearray(b"\x00" + wire[1:])))
    for version in (0, 1, 3, 15):  # 1: the format before the replay stamp
        with pytest.raises(BadVersion):
            codec.unpack(reseal(bytearray(wire[:1] + bytes([version << 4]) + wire[2:])))
    with pytest.raises(HeaderError):
        codec.unpack(reseal(bytearray(wire[:1] + bytes([0x27]) + wire[2:])))
    with pytest.raises(CRCError):
        codec.unpack(wire[:-1] + bytes([wire[-1] ^ 0x80]))
    assert codec.unpack(bytearray(wire)) == codec.unpack(memoryview(wire))


def test_header_fields_are_validated_before_use() -> None:
    codec = FrameCodec()
    wire = bytearray(codec.pack(Frame(FrameType.DATA, 1, 0, 2, 2, b"x" * 10)))
    too_long = bytearray(wire)
    too_long[12:14] = (433).to_bytes(2, "big")  # payload length past the frame
    with pytest.raises(HeaderError):
        codec.unpack(reseal(too_long))
    bad_index = bytearray(wire)
    bad_index[6:8] = (2).to_bytes(2, "big")  # index == k
    with pytest.raises(HeaderError):
        codec.unpack(reseal(bad_index))
    dirty_padding = bytearray(wire)
    dirty_padding[100] = 1
    with pytest.raises(HeaderError):
        codec.unpack(reseal(dirty_padding))


def test_wrong_key_tampering_and_missing_tag_give_auth_error() -> None:
    good = FrameCodec(auth_key=b"ground-key")
    wire = good.pack(Frame(FrameType.DATA, 5, 0, 1, 1, b"image bytes"))
    assert good.unpack(wire).payload == b"image bytes"
    with pytest.raises(AuthError):
        FrameCodec(auth_key=b"other-key").unpack(wire)
    tampered = bytearray(wire)
    tampered[20] ^= 0xFF
    with pytest.raises(AuthError):
        good.unpack(reseal(tampered))  # the attacker can fix the CRC, not the tag
    forged = FrameCodec().pack(Frame(FrameType.DATA, 5, 0, 1, 1, b"forged"))
    with pytest.raises(FrameError):
        good.unpack(forged)


@pytest.mark.parametrize(
    "frame, error",
    [
        (Frame(FrameType.DATA, 1, 0, 1, 1, b"x" * 433), FrameSizeError),
        (Frame(FrameType.DATA, 1, 1, 1, 1, b""), HeaderError),
        (Frame(FrameType.DATA, 1, 0, 0, 0, b""), HeaderError),
        (Frame(FrameType.DATA, 1, 0, 2, 1, b""), HeaderError),
        (Frame(FrameType.DATA, 1, 0, 10, 300, b""), HeaderError),
        (Frame(FrameType.DATA, 2**32, 0, 1, 1, b""), HeaderError),
        (Frame(FrameType.DATA, -1, 0, 1, 1, b""), HeaderError),
        (Frame(FrameType.DATA, 1, 0, 1, 1, b"", last_len=3), HeaderError),
        (Frame(FrameType.PARITY, 1, 0, 1, 2, b"\0" * 432), HeaderError),
        (Frame(FrameType.PARITY, 1, 1, 1, 2, b"\0" * 431), FrameSizeError),
        (Frame(FrameType.PARITY, 1, 1, 1, 2, b"\0" * 432, last_len=433), HeaderError),
        (Frame(FrameType.PARITY, 1, 256, 1, 257, b"\0" * 432), HeaderError),
        (Frame(FrameType.ACK, 0, 70000, 1, 1, b""), HeaderError),
        (Frame(7, 1, 0, 1, 1, b""), HeaderError),  # type: ignore[arg-type]
    ],
)
def test_pack_rejects_invalid_fields(frame: Frame, error: type[Exception]) -> None:
    with pytest.raises(error):
        FrameCodec().pack(frame)


def test_codec_parameters_are_checked() -> None:
    for size in (63, 9001, 450.0):
        with pytest.raises(FrameSizeError):
            FrameCodec(size)  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        FrameCodec(auth_key=b"")
    with pytest.raises(FrameError):
        FrameCodec(auth_key=b"k", tag_len=33)
    assert issubclass(FrameError, PacketizerError)
    assert FrameCodec(64, auth_key=b"k", tag_len=32).payload_capacity == 6
    with pytest.raises(FrameError):
        FrameCodec(auth_key=b"k", epoch=2**32)
