"""Pacing, priority, selective repeat from ACK bitmaps and RTO of the transmit scheduler (no sockets, no clock)."""

from __future__ import annotations

import pytest

from gateway.protocol.link_window import LinkWindow
from gateway.protocol.pacer import Pacer
from gateway.protocol.rto import RtoEstimator
from gateway.protocol.selective_repeat import META_INDEX, TransmitScheduler
from packetizer.ack import AckStatus


def drain(s: TransmitScheduler, now: float, limit: int = 100) -> list[tuple[int, int]]:
    out = []
    for _ in range(limit):
        p = s.next(now)
        if p is None:
            break
        s.sent(p.message_id, p.index, now)
        out.append((p.message_id, p.index))
    return out


def test_pacer_keeps_rate_and_no_faster():
    p = Pacer(0.1, burst=1)
    t, sent = 0.0, []
    while t < 10.0:
        if p.ready(t):
            p.sent(t)
            sent.append(t)
        t += 0.003
    assert 99 <= len(sent) <= 101
    # never ahead of the rate by more than the one frame of credit
    assert all(t - sent[0] >= (i - 1) * 0.1 - 1e-9 for i, t in enumerate(sent))
    # a late loop gets at most `burst` frames of credit back
    p = Pacer(0.1, burst=1)
    p.sent(0.0)
    assert p.ready(5.0)
    p.sent(5.0)
    assert p.ready(5.0)  # one credit frame
    p.sent(5.0)
    assert not p.ready(5.0)


def test_priority_then_age_and_meta_first():
    s = TransmitScheduler(RtoEstimator(1.0, 0.1, 10.0))
    s.add(1, priority=0, created=1.0, n=2)
    s.add(2, priority=5, created=2.0, n=1)
    s.add(3, priority=0, created=0.5, n=1, has_meta=False)
    order = drain(s, 0.0)
    assert order == [(2, META_INDEX), (2, 0), (3, 0), (1, META_INDEX), (1, 0), (1, 1)]
    assert s.next(0.0) is None  # everything in flight


def test_selective_repeat_from_ack_bitmap():
    s = TransmitScheduler(RtoEstimator(10.0, 0.1, 60.0), reorder_frames=0)
    s.add(9, priority=0, created=0.0, n=5, has_meta=False)
    drain(s, 0.0)
    out = s.on_ack(9, 5, frozenset({0, 2, 4}), AckStatus.RECEIVING, 0.5)
    assert out.newly_acked == [0, 2, 4]
    again = drain(s, 0.6)
    assert again == [(9, 1), (9, 3)]  # exactly the holes, long before the RTO
    assert s.progress(9)["retransmitted"] == 2
    out = s.on_ack(9, 5, frozenset(range(5)), AckStatus.DONE, 1.0)
    assert out.complete


def test_rto_fires_for_tail_loss_and_backs_off():
    s = TransmitScheduler(RtoEstimator(1.0, 0.1, 60.0))
    s.add(5, priority=0, created=0.0, n=1, has_meta=False)
    drain(s, 0.0)
    assert s.next(0.5) is None
    assert s.next_deadline(0.5) == pytest.approx(1.0)
    p = s.next(1.0)
    assert p is not None and p.retransmission
    s.sent(5, 0, 1.0)
    assert s.next(2.5) is None  # second try waits twice as long
    assert s.next(3.0) is not None


def test_rtt_samples_follow_karn_and_set_rto():
    rto = RtoEstimator(5.0, 0.05, 60.0)
    s = TransmitScheduler(rto)
    s.add(1, priority=0, created=0.0, n=3, has_meta=False)
    drain(s, 0.0)
    s.on_ack(1, 3, frozenset({0, 1, 2}), AckStatus.RECEIVING, 0.2)
    assert rto.samples == 3 and rto.srtt == pytest.approx(0.2)
    assert 0.2 <= rto.rto < 1.0
    # a retransmitted frame gives no sample
    s.add(2, priority=0, created=1.0, n=1, has_meta=False)
    drain(s, 1.0)
    s.next(3.0)
    s.sent(2, 0, 3.0)
    s.on_ack(2, 1, frozenset({0}), AckStatus.RECEIVING, 3.1)
    assert rto.samples == 3


def test_meta_repeated_when_receiver_waits_for_it():
    s = TransmitScheduler(RtoEstimator(10.0, 0.1, 60.0))
    s.add(4, priority=0, created=0.0, n=2, k=2)
    drain(s, 0.0)
    s.on_ack(4, 2, frozenset({0, 1}), AckStatus.RECEIVING, 0.3)
    p = s.next(0.3)
    assert p is not None and p.index == META_INDEX and p.retransmission


def test_foreign_acks_ignored_and_receiver_loss_resends():
    s = TransmitScheduler(RtoEstimator(10.0, 0.1, 60.0))
    s.add(1, priority=0, created=0.0, n=2, has_meta=False)
    drain(s, 0.0)
    assert s.on_ack(1, 7, frozenset({0}), AckStatus.RECEIVING, 0.1).ignored  # wrong n
    assert s.on_ack(99, 2, frozenset({0}), AckStatus.RECEIVING, 0.1).ignored  # unknown message
    s.on_ack(1, 2, frozenset({0, 1}), AckStatus.RECEIVING, 0.1)
    out = s.on_ack(1, 2, frozenset({1}), AckStatus.RECEIVING, 0.2)  # the receiver lost frame 0 (store wiped)
    assert out.unacked == [0]
    assert drain(s, 0.2) == [(1, 0)]


def test_transmission_limit_fails_message():
    s = TransmitScheduler(RtoEstimator(1.0, 0.1, 1.0), max_transmissions=2, max_backoff=1)
    s.add(1, priority=0, created=0.0, n=1, has_meta=False)
    drain(s, 0.0)
    drain(s, 1.0)
    assert s.over_limit(2.0) == [(1, "frame 0 was sent 2 times without being acknowledged")]


def test_link_window_stops_before_outage():
    w = LinkWindow()
    assert not w.can_send(0.0, 0.01)  # unknown: send nothing
    w.update_from_schedule({"up": True, "next_change_in": 10.0, "time_scale": 10.0, "forward_rate_bps": 2400,
                            "frame_size": 450}, now=100.0)
    assert w.frame_interval(450) == pytest.approx(0.15)
    assert w.can_send(100.5, 0.15)
    assert not w.can_send(100.75, 0.15)  # the frame would still be on the air when the link goes down
    w.update_from_schedule({"up": False, "next_change_in": 5.0, "time_scale": 10.0}, now=101.0)
    assert not w.can_send(101.0, 0.15)


def test_a_held_message_sends_only_probes_at_growing_intervals_until_done():
    # Before issue 16 the ground said "complete" at assembly and the sender forgot the message at once,
    # though the picture was not written yet.
    rto = RtoEstimator(1.0, 0.1, 60.0)
    s = TransmitScheduler(rto)
    s.add(3, priority=0, created=0.0, n=2, k=2)
    drain(s, 0.0)
    out = s.on_ack(3, 2, frozenset(), AckStatus.HELD, 0.5)
    assert out.held and out.newly_acked == [0, 1] and not out.complete and s.is_held(3)
    assert s.on_ack(3, 2, frozenset(), AckStatus.HELD, 0.6).held is False  # only news is news
    assert s.next(16.4) is None and s.next_deadline(1.0) == pytest.approx(16.5)
    probes = []
    t = 0.5
    for _ in range(4):
        t = s.next_deadline(t)
        pick = s.next(t)
        assert pick is not None and pick.index == META_INDEX and pick.retransmission
        s.sent(3, pick.index, t)
        probes.append(t)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == pytest.approx([32.0, 60.0, 60.0])  # 16 RTOs, doubling, up to the RTO ceiling
    assert s.over_limit(1e6) == []  # probing never fails a held message
    done = s.on_ack(3, 2, frozenset(), AckStatus.DONE, t + 1)
    assert done.complete and s.progress(3)["probes"] == 4


def test_probes_wait_for_every_other_frame():
    s = TransmitScheduler(RtoEstimator(1.0, 0.1, 60.0))
    s.add(1, priority=5, created=0.0, n=1, has_meta=False)
    drain(s, 0.0)
    s.on_ack(1, 1, frozenset(), AckStatus.HELD, 0.1)
    s.add(2, priority=0, created=1.0, n=2, has_meta=False)
    assert drain(s, 100.0) == [(2, 0), (2, 1), (1, 0)]  # the high-priority probe still goes last (no META: frame 0)


def test_failed_tells_the_reason_and_a_held_message_the_ground_lost_is_sent_again():
    s = TransmitScheduler(RtoEstimator(1.0, 0.1, 60.0))
    s.add(4, priority=0, created=0.0, n=2)
    drain(s, 0.0)
    assert s.on_ack(4, 2, frozenset(), AckStatus.FAILED, 0.5, "BitstreamError: bad").failed == "BitstreamError: bad"
    s.add(5, priority=0, created=0.0, n=2)
    drain(s, 0.0)
    s.on_ack(5, 2, frozenset(), AckStatus.HELD, 0.5)
    out = s.on_ack(5, 2, frozenset(), AckStatus.RECEIVING, 0.7)  # its store was wiped
    assert out.released and out.unacked == [0, 1]
    assert drain(s, 0.8) == [(5, META_INDEX), (5, 0), (5, 1)]


def test_a_message_held_before_the_time_scale_is_known_is_probed_on_the_scaled_clock():
    # The soak caught this: a sender restarted with held jobs queued them (first probe in 16 RTOs of
    # the unscaled 4 s guess: 64 s) before the link said its time scale was 40; the first probes went
    # out a minute of wall time late and one job was still held when the settle time ran out.
    rto = RtoEstimator(4.0, 0.2, 120.0)
    s = TransmitScheduler(rto)
    s.add(7, priority=0, created=0.0, n=2, k=2)
    s.hold(7, 0.0)
    assert s.next_deadline(0.0) == pytest.approx(64.0)
    rto.set_bounds(0.2 / 40, 120.0 / 40)
    rto.rto = 4.0 / 40
    s.rebase_probes(0.5)
    assert s.next_deadline(0.5) == pytest.approx(0.5 + 16 * 0.1)
    pick = s.next(2.1)
    assert pick is not None and pick.message_id == 7 and pick.retransmission
    s.sent(7, pick.index, 2.1)
    s.rebase_probes(2.2)  # a later rebase never brings a probe forward past its backoff
    assert s.next_deadline(2.2) == pytest.approx(2.1 + 3.0)
