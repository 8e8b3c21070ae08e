"""The bounded Reassembler: interleaving, exactly-once delivery, eviction, bad input."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.reassembly import Reassembler
from packetizer.segment import split_message

CODEC = FrameCodec()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 12), st.integers(0, 3))
def test_interleaved_messages_each_come_out_exactly_once(seed: int, count: int, parity: int) -> None:
    rnd = random.Random(seed)
    messages = {mid: rnd.randbytes(rnd.randint(0, 20_000)) for mid in rnd.sample(range(2**32), count)}
    frames = []
    for mid, message in messages.items():
        own = split_message(mid, message, CODEC, parity)
        frames += rnd.sample(own, len(own) - rnd.randint(0, parity))  # lose up to `parity` frames
    frames += [rnd.choice(frames) for _ in range(len(frames) // 2)]  # duplicates and retransmissions
    rnd.shuffle(frames)
    reassembler = Reassembler()
    out = [m for m in (reassembler.add(CODEC.unpack(CODEC.pack(f))) for f in frames) if m is not None]
    assert sorted(out) == sorted(messages.values())
    assert reassembler.stats["completed"] == count
    assert reassembler.stats["frames"] == len(frames)
    assert reassembler.stats["open_messages"] == 0 and reassembler.stats["open_bytes"] == 0
    for mid in messages:
        assert reassembler.is_complete(mid)
        assert reassembler.received(mid) == frozenset(range(frames_n(messages[mid], parity)))
        # Everything after completion is a late duplicate.
        assert all(reassembler.add(f) is None for f in split_message(mid, messages[mid], CODEC, parity))


def frames_n(message: bytes, parity: int) -> int:
    return len(split_message(0, message, CODEC, parity))


def test_received_and_duplicates_are_tracked() -> None:
    frames = split_message(5, bytes(3000), CODEC)
    r = Reassembler()
    assert r.received(5) == frozenset() and r.ack_entry(5) is None
    assert r.add(frames[3]) is None and r.add(frames[3]) is None and r.add(frames[0]) is None
    assert r.received(5) == frozenset({0, 3})
    entry = r.ack_entry(5)
    assert entry is not None and entry.received == {0, 3} and not entry.complete and entry.n == len(frames)
    assert r.stats["duplicates"] == 1
    assert list(r.open_messages()) == [5]
    results = [r.add(f) for f in frames]
    assert results.count(bytes(3000)) == 1
    assert r.ack_entry(5).complete  # type: ignore[union-attr]


def test_parity_recovery_is_counted() -> None:
    frames = split_message(8, bytes(range(256)) * 10, CODEC, parity=2)
    r = Reassembler()
    outputs = [r.add(f) for f in frames[1:]]
    assert outputs[-2] == bytes(range(256)) * 10 and outputs[-1] is None
    assert r.stats["fec_recovered"] == 1


def test_stale_partial_messages_time_out() -> None:
    clock = FakeClock()
    r = Reassembler(timeout_s=60, clock=clock)
    old = split_message(1, bytes(2000), CODEC)
    fresh = split_message(2, bytes(2000), CODEC)
    r.add(old[0])
    clock.now += 30
    r.add(fresh[0])
    clock.now += 31  # message 1 idle for 61 s, message 2 for 31 s
    assert r.expire() == 1
    assert r.stats["evicted_timeout"] == 1 and list(r.open_messages()) == [2]
    assert r.received(1) == frozenset()
    clock.now += 100
    r.add(old[1])  # adding also sweeps: message 2 goes, message 1 starts over
    assert r.stats["evicted_timeout"] == 2 and r.received(1) == frozenset({1})
    assert r.stats["open_bytes"] == len(old[1].payload)


def test_memory_cap_evicts_least_recently_active_first() -> None:
    r = Reassembler(max_bytes=5000)
    a = split_message(1, bytes(4000), CODEC)  # 10 frames, 4000 bytes
    b = split_message(2, bytes(4000), CODEC)
    for f in a[:8]:
        r.add(f)
    for f in b[:4]:
        r.add(f)
    assert r.stats["evicted_memory"] == 1 and list(r.open_messages()) == [2]
    assert r.stats["open_bytes"] == 4 * 432 <= 5000
    for f in b[4:]:
        out = r.add(f)
    assert out == bytes(4000)
    big = split_message(3, bytes(6000), CODEC)  # can never fit: dropped itself, nothing else hurt
    assert all(r.add(f) is None for f in big)
    assert r.stats["open_bytes"] <= 5000


def test_open_message_cap_evicts_oldest() -> None:
    r = Reassembler(max_open_messages=3)
    for mid in range(10):
        r.add(split_message(mid, bytes(1000), CODEC)[0])
    assert list(r.open_messages()) == [7, 8, 9]
    assert r.stats["evicted_open_limit"] == 7


def test_completed_ids_are_remembered_boundedly() -> None:
    r = Reassembler(max_completed=4)
    for mid in range(10):
        assert r.add(split_message(mid, b"x", CODEC)[0]) == b"x"
    assert not r.is_complete(0) and r.is_complete(9)
    assert r.add(split_message(0, b"x", CODEC)[0]) == b"x"  # forgotten, so delivered again
    assert r.add(split_message(9, b"x", CODEC)[0]) is None
    assert r.stats["late"] == 1


def test_contradicting_and_non_data_frames_are_dropped_not_raised() -> None:
    r = Reassembler()
    a = split_message(1, bytes(3000), CODEC, parity=1)
    assert r.add(a[0]) is None
    assert r.add(split_message(1, bytes(9000), CODEC)[1]) is None  # reused id, other counts
    assert r.add(dataclasses.replace(a[0], payload=b"x" * 432)) is None  # same index, other bytes
    assert r.add(Frame(FrameType.META, 1, 0, 1, 1, b"meta")) is None
    assert r.add(Frame(FrameType.ACK, 0, 0, 1, 1, b"")) is None
    assert r.stats["rejected"] == 2 and r.stats["ignored"] == 2
    assert r.received(1) == frozenset({0})
    outputs = [r.add(f) for f in a[1:]]
    assert outputs.count(bytes(3000)) == 1
