"""Channel models: measured behaviour matches configuration, fates are deterministic.

Statistical checks use seeded runs; tolerances are stated as multiples of the
standard error (about 5 sigma) so a correct model never fails by chance.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from link_sim.channel import Channel
from link_sim.clock import VirtualClock
from link_sim.config import ChannelConfig, DelayConfig, GilbertElliottConfig, LinkConfig, QueueConfig
from gateway.transport.contact_plan import AlwaysUp
from link_sim.link import Link, build_channel
from link_sim.stages import BernoulliLoss, BitErrors, Delay, Duplicator, GilbertElliott, Serializer

FRAME = 450
FAST = 1e12  # bit rate at which serialization takes no measurable time


def frames(n: int, size: int = FRAME) -> list[bytes]:
    return [i.to_bytes(4, "big") + bytes(size - 4) for i in range(n)]


def run(channel: Channel, n: int, spacing: float = 1.0, size: int = FRAME) -> list:
    """Offer n numbered frames spaced ``spacing`` apart, then collect everything."""
    for i, f in enumerate(frames(n, size)):
        channel.offer(f, i * spacing)
    return channel.poll_deliveries(math.inf)


def lost_pattern(channel: Channel, n: int) -> np.ndarray:
    got = {int.from_bytes(d.data[:4], "big") for d in run(channel, n)}
    return np.array([i not in got for i in range(n)])


def run_lengths(lost: np.ndarray) -> np.ndarray:
    padded = np.concatenate([[False], lost, [False]]).astype(np.int8)
    d = np.diff(padded)
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


def test_bernoulli_loss_rate_matches_p() -> None:
    n, p = 100_000, 0.05
    ch = Channel([Serializer(FAST), BernoulliLoss(p)], seed=7)
    lost = lost_pattern(ch, n)
    se = math.sqrt(p * (1 - p) / n)
    assert abs(lost.mean() - p) < 5 * se
    assert ch.counters["dropped"]["loss"] == lost.sum()
    # Independent losses: runs are geometric with mean 1 / (1 - p).
    assert run_lengths(lost).mean() == pytest.approx(1 / (1 - p), rel=0.02)


def test_gilbert_elliott_average_loss_and_mean_burst_length() -> None:
    n, p, r = 100_000, 0.02, 0.25
    ge = GilbertElliott(p, r)
    ch = Channel([Serializer(FAST), ge], seed=11)
    lost = lost_pattern(ch, n)
    assert ge.average_loss == pytest.approx(p / (p + r))
    # Correlated losses: standard error inflated by sqrt((1 + rho) / (1 - rho)), rho = 1 - p - r.
    rho = 1 - p - r
    se = math.sqrt(ge.average_loss * (1 - ge.average_loss) / n * (1 + rho) / (1 - rho))
    assert abs(lost.mean() - ge.average_loss) < 5 * se
    runs = run_lengths(lost)
    se_burst = math.sqrt(1 - r) / r / math.sqrt(len(runs))
    assert abs(runs.mean() - 1 / r) < 5 * se_burst
    assert ch.counters["dropped"]["burst"] == lost.sum()


def test_gilbert_elliott_from_mean_burst_and_average_loss() -> None:
    from link_sim.config import parse_link_config

    cfg = parse_link_config(
        {
            "forward": {"rate_bps": FAST, "gilbert_elliott": {"mean_burst_frames": 5, "average_loss": 0.1}},
            "return": {"rate_bps": FAST},
        }
    )
    ge = cfg.forward.gilbert_elliott
    assert ge is not None
    assert ge.r == pytest.approx(0.2) and ge.average_loss == pytest.approx(0.1)
    assert ge.mean_burst_frames == pytest.approx(5)
    lost = lost_pattern(build_channel(cfg.forward, AlwaysUp(), 3), 50_000)
    assert lost.mean() == pytest.approx(0.1, abs=0.018)  # 5 sigma with rho = 1 - p - r = 0.75
    assert run_lengths(lost).mean() == pytest.approx(5, rel=0.1)


def test_bit_errors_flip_real_bits_at_the_configured_rate() -> None:
    n, ber = 20_000, 1e-4
    stage = BitErrors(ber)
    ch = Channel([Serializer(FAST), stage], seed=5)
    sent = frames(n)
    out = run(ch, n)
    assert len(out) == n  # bit errors corrupt, they never drop
    assert [d.seq for d in out] == list(range(n))
    received = np.frombuffer(b"".join(d.data for d in out), np.uint8).reshape(n, FRAME)
    original = np.frombuffer(b"".join(sent), np.uint8).reshape(n, FRAME)
    per_frame = np.unpackbits(received ^ original, axis=1).sum(axis=1)
    flips, corrupted = int(per_frame.sum()), int((per_frame > 0).sum())
    assert [d.corrupted for d in out] == (per_frame > 0).tolist()
    for d, o, k in zip(out, sent, per_frame.tolist()):
        assert (zlib.crc32(d.data) != zlib.crc32(o)) == (k > 0)  # a CRC sees every one
    expected = n * FRAME * 8 * ber
    assert abs(flips - expected) < 5 * math.sqrt(expected)
    p_frame = 1 - (1 - ber) ** (FRAME * 8)
    assert abs(corrupted / n - p_frame) < 5 * math.sqrt(p_frame * (1 - p_frame) / n)
    assert ch.counters["corrupted"] == corrupted == stage.frames_corrupted
    assert ch.counters["bits_flipped"] == flips


def test_duplication_rate_and_counters() -> None:
    n, p = 30_000, 0.02
    ch = Channel([Serializer(FAST), Duplicator(p)], seed=9)
    out = run(ch, n)
    dups = sum(d.duplicate for d in out)
    assert len(out) == n + dups
    assert abs(dups / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert ch.counters["duplicated"] == dups
    assert ch.counters["delivered"] == n + dups


def test_delay_and_jitter_match_configuration() -> None:
    n, prop, jitter = 20_000, 0.27, 0.02
    ch = Channel([Serializer(FAST), Delay(prop, jitter)], seed=1)
    out = run(ch, n)
    delays = np.array([d.t_out - d.t_in for d in out])
    assert delays.min() >= prop and delays.max() <= prop + jitter + 1e-9
    # Uniform jitter: mean prop + j/2, standard deviation j / sqrt(12).
    assert abs(delays.mean() - (prop + jitter / 2)) < 5 * jitter / math.sqrt(12 * n)
    assert delays.std() == pytest.approx(jitter / math.sqrt(12), rel=0.03)


def test_jitter_larger_than_frame_spacing_reorders_but_delivers_in_time_order() -> None:
    ch = Channel([Serializer(FAST), Delay(0.0, 0.5)], seed=2)
    out = run(ch, 2000, spacing=0.1)
    times = [d.t_out for d in out]
    assert times == sorted(times)
    seqs = [d.seq for d in out]
    assert seqs != sorted(seqs) and sorted(seqs) == list(range(2000))


def test_serialization_throughput_is_the_configured_rate() -> None:
    rate, n = 2400.0, 1000
    ch = Channel([Serializer(rate, limit_frames=n)], seed=0)
    out = run(ch, n, spacing=0.0)  # everything offered at once: the link is the bottleneck
    frame_time = FRAME * 8 / rate
    times = np.array([d.t_out for d in out])
    assert len(out) == n
    assert np.allclose(np.diff(times), frame_time)
    assert times[-1] == pytest.approx(n * frame_time)
    throughput_bps = n * FRAME * 8 / times[-1]
    assert throughput_bps == pytest.approx(rate)


def test_frames_slower_than_the_rate_see_no_queueing() -> None:
    ch = Channel([Serializer(2400.0, limit_frames=1)], seed=0)
    out = run(ch, 100, spacing=2.0)  # one frame takes 1.5 s
    assert all(d.t_out - d.t_in == pytest.approx(1.5) for d in out)
    assert ch.counters["dropped"]["queue"] == 0


def test_queue_tail_drop_by_frames_then_recovers() -> None:
    ch = Channel([Serializer(2400.0, limit_frames=10)], seed=0)
    for f in frames(100):
        ch.offer(f, 0.0)
    # one frame in service, ten waiting, the rest dropped at the tail
    assert ch.counters["dropped"]["queue"] == 89
    assert ch.counters["queue_depth"] == 10
    out = ch.poll_deliveries(1000.0)
    assert [d.seq for d in out] == list(range(11))
    ch.offer(frames(1)[0], 1000.0)  # the queue has drained: accepted again
    assert ch.counters["dropped"]["queue"] == 89
    assert ch.counters["queue_depth"] == 0
    assert len(ch.poll(2000.0)) == 1


def test_queue_tail_drop_by_bytes() -> None:
    ch = Channel([Serializer(2400.0, limit_bytes=5 * FRAME + 100)], seed=0)
    for f in frames(20):
        ch.offer(f, 0.0)
    assert ch.counters["dropped"]["queue"] == 20 - 6
    assert ch.counters["queue_bytes"] == 5 * FRAME
    # half way through the second frame's transmission, four frames wait
    ch.poll(1.5 * 1.5)
    assert ch.counters["queue_depth"] == 4


HARSH = ChannelConfig(
    rate_bps=2400.0,
    queue=QueueConfig(frames=8),
    delay=DelayConfig(0.27, 0.5),
    loss=0.05,
    gilbert_elliott=GilbertElliottConfig(0.05, 0.3, 0.01, 0.9),
    ber=1e-4,
    duplicate=0.05,
)


def fates(seed: int, n: int = 400) -> list[tuple[float, bytes]]:
    ch = build_channel(HARSH, AlwaysUp(), seed)
    for i, f in enumerate(frames(n)):
        ch.offer(f, i * 1.2)
    return ch.poll(math.inf)


def test_same_seed_same_fates_different_seed_different_fates() -> None:
    a, b, c = fates(42), fates(42), fates(43)
    assert a == b
    assert a != c


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    gaps=st.lists(st.floats(0, 3.0, allow_nan=False), min_size=1, max_size=60),
)
def test_counters_balance_and_deliveries_are_time_ordered(seed: int, gaps: list[float]) -> None:
    ch = build_channel(HARSH, AlwaysUp(), seed)
    t = 0.0
    for f, gap in zip(frames(len(gaps)), gaps):
        t += gap
        ch.offer(f, t)
    half = ch.poll(t / 2)
    rest = ch.poll(math.inf)
    times = [x[0] for x in half + rest]
    assert times == sorted(times)
    c = ch.counters
    assert c["in"] + c["duplicated"] == c["delivered"] + sum(c["dropped"].values()) + c["in_flight"]
    assert c["in_flight"] == 0 and c["delivered"] == len(times)


def test_offers_going_back_in_time_are_refused() -> None:
    ch = Channel([Serializer(FAST)])
    ch.offer(b"x" * FRAME, 5.0)
    with pytest.raises(ValueError, match="backwards"):
        ch.offer(b"x" * FRAME, 4.0)


def test_link_on_a_virtual_clock_runs_hours_of_traffic() -> None:
    cfg = LinkConfig(
        forward=ChannelConfig(rate_bps=2400.0, delay=DelayConfig(0.27, 0.0)),
        ret=ChannelConfig(rate_bps=2400.0, delay=DelayConfig(0.27, 0.0)),
    )
    clock = VirtualClock()
    link = Link(cfg, clock)
    delivered = {"forward": 0, "return": 0}
    for _ in range(3600):  # one frame each way every 2 s for two simulated hours
        link.offer("forward", bytes(FRAME))
        link.offer("return", bytes(FRAME))
        clock.advance(2.0)
        for direction, d in link.poll():
            delivered[direction] += 1
            assert d.t_out - d.t_in == pytest.approx(1.5 + 0.27)
    assert delivered == {"forward": 3600, "return": 3600}
    assert clock.now() == pytest.approx(7200.0)
    assert link.stats()["forward"]["delivered"] == 3600
