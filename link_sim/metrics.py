"""The link simulator's Prometheus metrics (served at ``metrics.listen`` or ``--metrics-listen``).

Everything is read from the link's own counters when scraped (the ``stats``
reply of its control socket), per direction: frames in, delivered, dropped by
cause (loss, burst, queue, outage, no_peer, peer_busy), corrupted, duplicated,
queue depth, the time the transmitter was busy, whose rate is the link's
utilization, and per side what came from peers that did not prove the frame
key. Names in ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from link_sim.channel import DROP_CAUSES
from link_sim.config import LinkConfig
from link_sim.link import DIRECTIONS, FORWARD

#: Drop causes decided before a frame is on the air: it never used the transmitter.
NOT_TRANSMITTED = ("queue", "outage")

_PER_DIRECTION = (
    ("in", "satgw_link_frames_in_total", "Frames offered to the link"),
    ("bytes_in", "satgw_link_bytes_in_total", "Bytes offered to the link"),
    ("delivered", "satgw_link_frames_delivered_total", "Frames handed to the receiving side"),
    ("bytes_delivered", "satgw_link_bytes_delivered_total", "Bytes handed to the receiving side"),
    ("corrupted", "satgw_link_frames_corrupted_total", "Frames delivered with bit errors"),
    ("bits_flipped", "satgw_link_bits_flipped_total", "Bits flipped by the bit-error model"),
    ("duplicated", "satgw_link_frames_duplicated_total", "Extra copies of frames the link delivered"),
)


class LinkMetrics:
    """A registry whose collector reads ``stats()`` (the link daemon's stats reply) when scraped."""

    def __init__(self, config: LinkConfig, stats: Callable[[], dict[str, Any]]) -> None:
        self.config, self.stats = config, stats
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The link's counters and gauges (prometheus_client's collector protocol)."""
        for _ in range(10):  # the loop may add a key while we copy: read again
            try:
                st = self.stats()
                break
            except RuntimeError:
                continue
        else:
            return
        channels = {FORWARD: self.config.forward, "return": self.config.ret}
        for key, name, help_ in _PER_DIRECTION:
            fam = CounterMetricFamily(name, help_, labels=["direction"])
            for d in DIRECTIONS:
                fam.add_metric([d], float(st[d].get(key, 0)))
            yield fam
        dropped = CounterMetricFamily("satgw_link_frames_dropped_total",
                                      "Frames the link dropped, by cause (loss and burst are the channel's losses)",
                                      labels=["direction", "cause"])
        busy = CounterMetricFamily("satgw_link_busy_seconds_total",
                                   "Wall seconds the transmitter was sending; its rate is the link's utilization",
                                   labels=["direction"])
        for d in DIRECTIONS:
            drops = st[d].get("dropped", {})
            for cause in sorted(set(DROP_CAUSES) | set(drops)):
                dropped.add_metric([d, cause], float(drops.get(cause, 0)))
            sent = st[d].get("in", 0) - sum(drops.get(c, 0) for c in NOT_TRANSMITTED)
            busy.add_metric([d], max(0, sent) * channels[d].frame_time_s / self.config.time_scale)
        yield dropped
        yield busy
        for key, name, help_ in (("queue_depth", "satgw_link_queue_frames", "Frames waiting to be sent"),
                                 ("queue_bytes", "satgw_link_queue_bytes", "Bytes waiting to be sent"),
                                 ("in_flight", "satgw_link_in_flight_frames", "Frames sent and not yet delivered")):
            g = GaugeMetricFamily(name, help_, labels=["direction"])
            for d in DIRECTIONS:
                g.add_metric([d], float(st[d].get(key, 0)))
            yield g
        rate = GaugeMetricFamily("satgw_link_rate_bits_per_second", "Link rate in bits per link second",
                                 labels=["direction"])
        for d in DIRECTIONS:
            rate.add_metric([d], channels[d].rate_bps)
        yield rate
        yield GaugeMetricFamily("satgw_link_up", "1 while the link is available (not in an outage), else 0",
                                value=1.0 if st.get("up") else 0.0)
        yield GaugeMetricFamily("satgw_link_time_scale", "Simulated seconds per wall second",
                                value=self.config.time_scale)
        peers = GaugeMetricFamily("satgw_link_peer_connected", "1 once a daemon was heard on that side",
                                  labels=["side"])
        for side, seen in st.get("peers", {}).items():
            peers.add_metric([side], 1.0 if seen else 0.0)
        yield peers
        refused = CounterMetricFamily("satgw_link_peer_messages_refused_total",
                                      "Hellos and frames from peers that did not prove the frame key (or are not "
                                      "the side's authenticated peer), dropped", labels=["side"])
        for side, count in st.get("refused", {}).items():
            refused.add_metric([side], float(count))
        yield refused
