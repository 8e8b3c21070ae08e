"""The replay stamp of authenticated frames and the anti-replay window: a recorded frame replayed later is dropped."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packetizer.errors import AuthError, ReplayError
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.replay import ReplayWindow

KEY = b"0123456789abcdef-pre-shared"


def data_frame(i: int) -> Frame:
    return Frame(FrameType.DATA, 7, i % 3, 3, 3, b"block %d" % i)


def test_a_recorded_frame_replayed_later_is_dropped() -> None:
    sender = FrameCodec(auth_key=KEY, epoch=1000)
    ground = FrameCodec(auth_key=KEY, replay=ReplayWindow())
    wire = [sender.pack(data_frame(i)) for i in range(5)]
    assert [ground.unpack(w) for w in wire] == [data_frame(i) for i in range(5)]
    for w in wire:
        with pytest.raises(ReplayError, match="already received"):
            ground.unpack(w)
    # A retransmission is a new frame with a new stamp: it is taken.
    assert ground.unpack(sender.pack(data_frame(0))) == data_frame(0)


def test_a_restarted_sender_starts_a_newer_epoch_and_the_old_one_is_closed() -> None:
    ground = FrameCodec(auth_key=KEY, replay=ReplayWindow())
    old = FrameCodec(auth_key=KEY, epoch=1000)
    recorded = [old.pack(data_frame(i)) for i in range(3)]
    ground.unpack(recorded[0])
    new = FrameCodec(auth_key=KEY, epoch=1001)
    ground.unpack(new.pack(data_frame(1)))
    with pytest.raises(ReplayError, match="older than the sender's current epoch"):
        ground.unpack(recorded[1])  # never seen, but from the sender's previous life


def test_the_stamp_is_under_the_tag() -> None:
    sender = FrameCodec(auth_key=KEY, epoch=5)
    ground = FrameCodec(auth_key=KEY, replay=ReplayWindow())
    wire = bytearray(sender.pack(data_frame(0)))
    stamp_at = 450 - 4 - 8 - 8
    wire[stamp_at + 7] ^= 1  # a replayer renumbering a recorded frame
    from test_packetizer_frame import reseal

    with pytest.raises(AuthError):
        ground.unpack(reseal(wire))
    assert ground.replay is not None and ground.replay.state is None  # nothing was taken


def test_a_restored_window_counts_everything_up_to_its_highest_as_taken() -> None:
    sender = FrameCodec(auth_key=KEY, epoch=9)
    wire = [sender.pack(data_frame(i)) for i in range(4)]
    first = FrameCodec(auth_key=KEY, replay=ReplayWindow())
    first.unpack(wire[2])
    saved = first.replay.state if first.replay else None
    assert saved == (9, 2)
    after_restart = FrameCodec(auth_key=KEY, replay=ReplayWindow.restored(saved))
    for w in wire[:3]:
        with pytest.raises(ReplayError):
            after_restart.unpack(w)
    assert after_restart.unpack(wire[3]) == data_frame(3)


def test_stamps_too_far_behind_the_window_are_refused() -> None:
    w = ReplayWindow(size=16)
    w.check(1, 100)
    w.check(1, 85)  # 15 behind: inside
    with pytest.raises(ReplayError, match="older than the replay window"):
        w.check(1, 84)
    with pytest.raises(ReplayError):
        w.check(1, 2**32)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(0, 40))
def test_any_reordering_within_the_window_takes_every_stamp_exactly_once(seed: int, count: int, jitter: int) -> None:
    rnd = random.Random(seed)
    arrivals = sorted(range(count), key=lambda s: s + rnd.uniform(0, jitter))  # bounded reordering
    copies = arrivals + rnd.sample(arrivals, min(len(arrivals), 10))  # the link repeats some, later
    w = ReplayWindow(size=64)
    taken = []
    for s in copies:
        try:
            w.check(3, s)
        except ReplayError:
            continue
        taken.append(s)
    assert sorted(taken) == list(range(count))
