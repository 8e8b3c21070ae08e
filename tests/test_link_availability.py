"""Availability windows (explicit and periodic) and what they do to frames."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.contact_plan import AlwaysUp, PeriodicPasses, Windows
from link_sim.channel import Channel
from link_sim.clock import VirtualClock
from link_sim.config import ChannelConfig, LinkConfig
from link_sim.link import Link
from link_sim.stages import AvailabilityGate, Serializer

FRAME = bytes(450)
FRAME_TIME = 1.5  # 450 bytes at 2400 bit/s


def test_explicit_windows_membership_and_changes() -> None:
    w = Windows([(10, 20), (40, 50), (15, 25)])  # overlapping windows merge
    assert w.windows == ((10.0, 25.0), (40.0, 50.0))
    assert [w.is_up(t) for t in (0, 10, 24.9, 25, 39, 40, 49.99, 50, 1e9)] == [
        False, True, True, False, False, True, True, False, False,
    ]
    assert w.next_change(0) == 10 and w.next_change(10) == 25 and w.next_change(30) == 40
    assert w.next_change(50) is None


@settings(max_examples=60, deadline=None)
@given(
    spans=st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 100)), min_size=1, max_size=8),
    probes=st.lists(st.floats(-10, 1200, allow_nan=False), min_size=1, max_size=20),
)
def test_windows_agree_with_brute_force(spans: list[tuple[int, int]], probes: list[float]) -> None:
    windows = [(float(s), float(s + d)) for s, d in spans]
    w = Windows(windows)
    for t in probes:
        assert w.is_up(t) == any(s <= t < e for s, e in windows)
        change = w.next_change(t)
        if change is None:
            assert not w.is_up(t) and all(e <= t for _, e in windows)
        else:
            assert change > t
            assert w.is_up(change) != w.is_up(t)
            mid = (t + change) / 2
            if t < mid < change:  # nothing changes before it (unless change is one ulp after t)
                assert w.is_up(mid) == w.is_up(t)


@settings(max_examples=60, deadline=None)
@given(
    period=st.floats(10, 10_000),
    share=st.floats(0.01, 0.99),
    offset=st.floats(-1e4, 1e4),
    t=st.floats(-1e5, 1e5),
)
def test_periodic_passes(period: float, share: float, offset: float, t: float) -> None:
    p = PeriodicPasses(period, period * share, offset)
    phase = (t - offset) % period
    if 1e-6 < phase < period - 1e-6 and abs(phase - period * share) > 1e-6:  # away from rounding at edges
        assert p.is_up(t) == (phase < period * share)
    change = p.next_change(t)
    assert change is not None and t < change <= t + period + 1e-6
    mid = (t + change) / 2
    if t < mid < change:  # when change is one ulp after t the midpoint rounds onto it
        assert p.is_up(mid) == p.is_up(t)
    # Probe just past the change: above float resolution at this magnitude, well inside the next state.
    eps = min(1e-6 * max(1.0, abs(change)), p.duration_s / 4, (p.period_s - p.duration_s) / 4)
    assert p.is_up(change + eps) != p.is_up(t)


def test_periodic_pass_fraction_over_many_orbits() -> None:
    p = PeriodicPasses(5700, 600, 0)  # the leo preset
    samples = [p.is_up(t) for t in range(0, 5700 * 20, 7)]
    assert sum(samples) / len(samples) == pytest.approx(600 / 5700, rel=0.01)
    assert PeriodicPasses(100, 100).next_change(5) is None and PeriodicPasses(100, 100).is_up(1e9)


def test_frames_offered_while_down_are_dropped_as_outage() -> None:
    ch = Channel([Serializer(2400.0, availability=Windows([(100, 200)]))])
    for t in (0.0, 50.0, 150.0, 250.0):
        ch.offer(FRAME, t)
    out = ch.poll(math.inf)
    assert [t for t, _ in out] == [150.0 + FRAME_TIME]
    assert ch.counters["dropped"]["outage"] == 3


def test_window_close_loses_frame_in_transmission_and_flushes_queue() -> None:
    ch = Channel([Serializer(2400.0, limit_frames=100, availability=Windows([(0, 10)]))])
    for _ in range(10):  # 10 frames at t=0 need 15 s of air time; the window is 10 s
        ch.offer(FRAME, 0.0)
    out = ch.poll(math.inf)
    # frames 0..5 finish by 9 s; frame 6 runs 9..10.5 and is cut; 7..9 are flushed at 10 s
    assert len(out) == 6 and out[-1][0] == pytest.approx(9.0)
    assert ch.counters["dropped"]["outage"] == 4
    assert ch.counters["queue_depth"] == 0


def test_queue_slots_held_by_doomed_frames_free_at_close() -> None:
    ch = Channel([Serializer(2400.0, limit_frames=2, availability=Windows([(0, 2), (5, 10)]))])
    for _ in range(4):
        ch.offer(FRAME, 0.0)  # 1 sent, 2 waiting (to be flushed at 2 s), 1 tail-dropped
    assert ch.counters["dropped"]["queue"] == 1
    ch.offer(FRAME, 6.0)  # next window: queue is empty again
    out = ch.poll(math.inf)
    assert [round(t, 6) for t, _ in out] == [1.5, 7.5]
    assert ch.counters["dropped"]["outage"] == 2


def test_availability_gate_stage_composes_alone() -> None:
    ch = Channel([AvailabilityGate(PeriodicPasses(10, 5))])
    for t in range(20):
        ch.offer(FRAME, float(t))
    assert [t for t, _ in ch.poll(math.inf)] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


def test_availability_applies_to_both_directions_and_schedule_reports_it() -> None:
    cfg = LinkConfig(
        forward=ChannelConfig(rate_bps=9600.0),
        ret=ChannelConfig(rate_bps=2400.0),
        availability=PeriodicPasses(100, 10),
        time_scale=60.0,
    )
    clock = VirtualClock()
    link = Link(cfg, clock)
    sched = link.schedule()
    assert sched["up"] and sched["next_change_in"] == pytest.approx(10)
    assert sched["forward_rate_bps"] == 9600 and sched["return_rate_bps"] == 2400 and sched["time_scale"] == 60
    clock.set(50.0)
    assert not link.schedule()["up"] and link.schedule()["next_change_in"] == pytest.approx(50)
    link.offer("forward", FRAME)
    link.offer("return", FRAME)
    stats = link.stats()
    assert stats["forward"]["dropped"]["outage"] == 1 and stats["return"]["dropped"]["outage"] == 1
    assert AlwaysUp().next_change(0) is None
