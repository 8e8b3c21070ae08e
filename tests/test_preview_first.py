"""The sender's ``preview_first`` order: round robin by frame index across the queue, data before parity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.daemon.config import load_sender_config
from gateway.errors import ConfigError
from gateway.paths import config_dir
from gateway.protocol.rto import RtoEstimator
from gateway.protocol.selective_repeat import META_INDEX, TransmitScheduler
from packetizer.ack import AckStatus

#: (k data frames, m parity frames, priority, has a META frame) per queued message
MESSAGES = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, 3), st.integers(-2, 2), st.booleans()), min_size=1, max_size=8
)


def _queue(messages: list[tuple[int, int, int, bool]]) -> tuple[TransmitScheduler, dict[int, int]]:
    s = TransmitScheduler(RtoEstimator(50.0, 0.1, 100.0), reorder_frames=1, preview_first=True)
    ks = {}
    for i, (k, m, prio, meta) in enumerate(messages):
        s.add(100 + i, priority=prio, created=float(i), n=k + m, k=k, has_meta=meta)
        ks[100 + i] = k
    return s, ks


def _drain(s: TransmitScheduler, now: float) -> list[tuple[int, int]]:
    out = []
    while (p := s.next(now)) is not None:
        s.sent(p.message_id, p.index, now)
        out.append((p.message_id, p.index))
        assert len(out) < 10_000
    return out


def _slot(index: int, k: int) -> tuple[int, int]:
    """(data 0 / parity 1, position): the order the round robin promises."""
    return (0, index) if index < k else (1, index - k)


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_every_first_frame_before_any_second_and_data_before_parity(messages) -> None:
    s, ks = _queue(messages)
    sent = _drain(s, 0.0)
    frames = [(mid, i) for mid, i in sent if i != META_INDEX]
    # Every frame once, nothing left out.
    assert sorted(frames) == sorted((mid, i) for mid, (k, m, _, _) in zip(ks, messages) for i in range(k + m))
    # The slots never go backwards: all data frames 0, then all data frames 1, ..., then parity 0, 1, ...
    slots = [_slot(i, ks[mid]) for mid, i in frames]
    assert slots == sorted(slots)
    first_ones = [pos for pos, (_, i) in enumerate(frames) if i == 0]
    assert max(first_ones) < min((pos for pos, (mid, i) in enumerate(frames) if i >= 1), default=len(frames))
    # Within one slot, messages go by priority then age, as without preview_first.
    order = {mid: pos for pos, mid in enumerate(s.message_ids())}
    for a, b in zip(frames, frames[1:]):
        if _slot(a[1], ks[a[0]]) == _slot(b[1], ks[b[0]]):
            assert order[a[0]] < order[b[0]]
    # Each META frame goes after every message's frame 0 and before any frame 1.
    metas = [pos for pos, (_, i) in enumerate(sent) if i == META_INDEX]
    assert len(metas) == sum(1 for *_, meta in messages if meta)
    zeros = [pos for pos, (_, i) in enumerate(sent) if i == 0]
    later = [pos for pos, (mid, i) in enumerate(sent) if i != META_INDEX and i >= 1]
    for pos in metas:
        assert pos > max(zeros) and pos < min(later, default=len(sent))


@settings(max_examples=100, deadline=None)
@given(MESSAGES, st.data())
def test_a_lost_frame_goes_again_before_any_new_frame_of_a_later_slot(messages, data) -> None:
    s, ks = _queue(messages)
    first_round = [(mid, i) for mid, i in _drain(s, 0.0) if i != META_INDEX]
    # The ground reports some frames; the holes older than acknowledged ones are lost (reorder_frames=1).
    for mid, k in ks.items():
        n = s.progress(mid)["n"]
        got = data.draw(st.frozensets(st.integers(0, n - 1)), label=f"received of {mid}")
        s.on_ack(mid, n, got, AckStatus.RECEIVING, 1.0)
    s2 = _drain(s, 200.0)  # every unacknowledged frame's timeout has passed: all of them go again
    again = [(mid, i) for mid, i in s2 if i != META_INDEX]
    slots = [_slot(i, ks[mid]) for mid, i in again]
    assert slots == sorted(slots)
    assert len(set(again)) == len(again) and set(again) <= set(first_round)


def test_without_preview_first_one_message_goes_out_whole_before_the_next() -> None:
    s = TransmitScheduler(RtoEstimator(50.0, 0.1, 100.0))
    s.add(1, priority=0, created=0.0, n=3, k=2)
    s.add(2, priority=0, created=1.0, n=2, k=2)
    assert _drain(s, 0.0) == [(1, META_INDEX), (1, 0), (1, 1), (1, 2), (2, META_INDEX), (2, 0), (2, 1)]
    r, _ = _queue([(2, 1, 0, True), (2, 0, 0, True)])
    assert _drain(r, 0.0) == [(100, 0), (101, 0), (100, META_INDEX), (101, META_INDEX), (100, 1), (101, 1),
                              (100, 2)]


def test_held_messages_are_probed_only_when_nothing_else_waits() -> None:
    s, _ = _queue([(1, 0, 0, True), (2, 0, 0, True)])
    _drain(s, 0.0)
    s.on_ack(100, 1, frozenset(), AckStatus.HELD, 1.0)
    s.on_ack(101, 2, frozenset({1}), AckStatus.RECEIVING, 1.0)
    pick = s.next(1000.0)  # 101's frame 0 timed out; 100's probe is due too: the frame goes first
    assert (pick.message_id, pick.index, pick.retransmission) == (101, 0, True)
    s.sent(101, 0, 1000.0)
    pick = s.next(1000.0)
    assert (pick.message_id, pick.index) == (100, META_INDEX) and s.is_held(100)


def test_the_sender_config_key() -> None:
    shipped = config_dir() / "daemons" / "sender.yaml"
    assert load_sender_config(shipped).arq.preview_first is False
    assert load_sender_config(shipped, {"arq.preview_first": True}).arq.preview_first is True
    with pytest.raises(ConfigError, match="arq.preview_first"):
        load_sender_config(shipped, {"arq.preview_first": "sometimes"})
