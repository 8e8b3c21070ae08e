"""Segmentation, zfec erasure coding and stateless reassembly, through the wire codec."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packetizer.errors import FECError, HeaderError, MessageTooLarge, ReassemblyError
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import assemble, frames_for, message_capacity, split_message


def over_the_wire(frames: list[Frame], codec: FrameCodec) -> list[Frame]:
    return [codec.unpack(codec.pack(f)) for f in frames]


def shuffled_with_duplicates(frames: list[Frame], rnd: random.Random) -> list[Frame]:
    out = frames + [rnd.choice(frames) for _ in range(rnd.randint(0, len(frames)))]
    rnd.shuffle(out)
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 200_000), st.integers(64, 9000), st.integers(0, 2**32), st.integers(0, 2**32 - 1))
def test_any_message_round_trips_in_any_order_with_duplicates(size: int, frame_size: int, seed: int, mid: int) -> None:
    rnd = random.Random(seed)
    codec = FrameCodec(frame_size)
    message = rnd.randbytes(size)
    frames = split_message(mid, message, codec)
    assert len(frames) == frames_for(size, codec)
    assert all(f.k == f.n == len(frames) and f.message_id == mid for f in frames)
    assert assemble(shuffled_with_duplicates(over_the_wire(frames, codec), rnd)) == message


def test_one_mebibyte_message_round_trips() -> None:
    rnd = random.Random(7)
    codec = FrameCodec()
    message = rnd.randbytes(2**20)
    frames = over_the_wire(split_message(42, message, codec), codec)
    assert len(frames) == frames_for(2**20, codec) == 2428
    rnd.shuffle(frames)
    assert assemble(frames) == message


def test_empty_message_is_one_data_frame() -> None:
    codec = FrameCodec()
    frames = split_message(1, b"", codec)
    assert [(f.type, f.index, f.k, f.n, f.payload) for f in frames] == [(FrameType.DATA, 0, 1, 1, b"")]
    assert assemble(over_the_wire(frames, codec)) == b""
    parity = split_message(1, b"", codec, parity=2)
    assert assemble(over_the_wire(parity[1:2], codec)) == b""


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40_000), st.integers(64, 2000), st.integers(0, 40), st.integers(0, 2**32), st.booleans())
def test_any_m_erasures_are_rebuilt(size: int, frame_size: int, parity: int, seed: int, auth: bool) -> None:
    rnd = random.Random(seed)
    codec = FrameCodec(frame_size, auth_key=b"k" if auth else None)
    message = rnd.randbytes(size)
    k = frames_for(size, codec)
    if parity and k + parity > 256:
        with pytest.raises(FECError):
            split_message(3, message, codec, parity)
        return
    frames = over_the_wire(split_message(3, message, codec, parity), codec)
    assert len(frames) == k + parity
    survivors = rnd.sample(frames, k)  # any k of k + m: up to m erased
    assert assemble(shuffled_with_duplicates(survivors, rnd)) == message
    if k > 1 or parity:
        too_few = rnd.sample(frames, k - 1)  # one more erasure than the code can take
        assert assemble(too_few) is None


def test_length_survives_losing_the_last_data_frame() -> None:
    codec = FrameCodec()
    for size in (1, 431, 432, 433, 1000, 864):
        message = bytes(range(256)) * (size // 256) + bytes(size % 256)
        frames = split_message(9, message, codec, parity=1)
        k = frames[0].k
        assert all(f.last_len == size - (k - 1) * 432 for f in frames if f.type == FrameType.PARITY)
        assert assemble(over_the_wire(frames[: k - 1] + frames[k:], codec)) == message


def test_frames_for_and_message_capacity_agree() -> None:
    for frame_size in (64, 450, 9000):
        codec = FrameCodec(frame_size)
        for parity in (0, 1, 8):
            for n_frames in range(parity, parity + 40):
                fits = message_capacity(n_frames, codec, parity)
                if n_frames == parity:
                    assert fits == 0
                    continue
                assert frames_for(fits, codec, parity) == n_frames
                assert frames_for(fits + 1, codec, parity) == n_frames + 1
    codec = FrameCodec()
    assert message_capacity(1000, codec, parity=6) == 250 * 432  # zfec's 256-frame limit
    assert message_capacity(10**6, codec) == 65535 * 432
    assert frames_for(0, codec) == 1 and frames_for(0, codec, 3) == 4


def test_impossible_requests_raise_clear_errors() -> None:
    codec = FrameCodec()
    with pytest.raises(FECError, match="256"):
        split_message(1, bytes(250 * 432), codec, parity=7)
    with pytest.raises(FECError, match="256"):
        frames_for(250 * 432, codec, parity=7)
    with pytest.raises(FECError):
        frames_for(10, codec, parity=-1)
    with pytest.raises(MessageTooLarge):
        frames_for(65536 * 432, codec)
    with pytest.raises(HeaderError):
        split_message(2**32, b"x", codec)


def test_inconsistent_frames_raise_reassembly_error() -> None:
    codec = FrameCodec()
    a = split_message(1, bytes(2000), codec, parity=2)
    b = split_message(2, bytes(2000), codec, parity=2)
    c = split_message(1, bytes(5000), codec)
    with pytest.raises(ReassemblyError):
        assemble([a[0], b[1]])  # two messages
    with pytest.raises(ReassemblyError):
        assemble([a[0], c[1]])  # same id, other counts
    with pytest.raises(ReassemblyError):
        assemble([a[0], dataclasses.replace(a[0], payload=b"other")])  # same index, other content
    with pytest.raises(ReassemblyError):
        assemble([a[0], dataclasses.replace(a[1], payload=a[1].payload[:-1])])  # short middle block
    with pytest.raises(ReassemblyError):
        assemble([a[4], a[-1], dataclasses.replace(a[-2], last_len=1)])  # parity frames disagree on length
    with pytest.raises(ReassemblyError):
        assemble([Frame(FrameType.META, 1, 0, 1, 1, b"meta")])
    assert assemble([]) is None
    assert assemble(a[:2]) is None
