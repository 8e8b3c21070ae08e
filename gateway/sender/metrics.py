"""The sender's Prometheus metrics (served at ``metrics.listen``; names in ``docs/metrics.md``).

Counters come from the daemon's own ``counters`` map at scrape time (one
source of truth with ``satgw status``); the queue by state and the spool's
size are read from the spool through a read-only connection of the scrape
thread; the link's state from the daemon's link window. Only what happens in
the encoder thread is recorded as it happens: :meth:`SenderMetrics.encoded`
and :meth:`SenderMetrics.encode_failed`.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from gateway.daemon.metrics import database_families, fault_families, link_families
from gateway.store.spool import STATES
from gateway.transport.metrics_http import CounterSpec, counter_families, gauge, snapshot

_FAILED = "satgw_sender_images_failed_total"
_FAILED_HELP = ("Images that failed, by stage: encode (rate control or the image itself), transmit (frame limits) "
                "or ground (the ground station could not decode the bitstream: FAILED)")

COUNTERS = (
    CounterSpec("frames_sent", "satgw_sender_frames_sent_total",
                "Frames put on the link: DATA, PARITY and META, retransmissions included"),
    CounterSpec("retransmissions", "satgw_sender_frames_retransmitted_total",
                "Frames sent again because they were not acknowledged in time"),
    CounterSpec("meta_sent", "satgw_sender_meta_frames_sent_total", "META frames sent (one per message, plus repeats)"),
    CounterSpec("ack_frames", "satgw_sender_ack_frames_received_total", "ACK frames received from the ground"),
    CounterSpec("bad_frames", "satgw_sender_frames_rejected_total",
                "Return-link frames dropped: CRC or HMAC tag wrong, malformed, or not an ACK"),
    CounterSpec("link_refused", "satgw_sender_frames_refused_by_link_total",
                "Frames the link socket would not take (not connected, or its queue full); tried again later"),
    CounterSpec("accepted", "satgw_sender_images_accepted_total", "Images accepted into the spool"),
    CounterSpec("delivered", "satgw_sender_images_delivered_total",
                "Images the ground station reported written to its disk (DONE)"),
    CounterSpec("held", "satgw_sender_images_held_total",
                "Images the ground station reported complete but not yet written (HELD); probed until DONE or FAILED"),
    CounterSpec("probes", "satgw_sender_probe_frames_sent_total",
                "Frames sent to ask the ground about a held image whose DONE or FAILED was not heard"),
    CounterSpec("failed_transmit", _FAILED, _FAILED_HELP, (("stage", "transmit"),)),
    CounterSpec("failed_by_ground", _FAILED, _FAILED_HELP, (("stage", "ground"),)),
    CounterSpec("expired", "satgw_sender_images_expired_total", "Images not delivered within arq.ttl_s"),
    CounterSpec("repeated_requests", "satgw_sender_requests_repeated_total",
                "'satgw send' retries whose request id was already accepted: the same job answered, none added"),
    CounterSpec("refused", "satgw_sender_requests_refused_total",
                "Send requests refused with a reason (bad image, limits, queue full, spool unavailable)"),
)
#: The resources the sender reports to its fault board (gateway.sender: SPOOL, SPOOL_FILE).
RESOURCES = ("spool", "spool_file")

ENCODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SenderMetrics:
    """The sender daemon's registry: a collector over the daemon's state plus the encoder's histogram.

    ``daemon`` is the :class:`~gateway.sender.daemon.SenderDaemon`; its
    ``counters``, ``cfg.spool``, ``codec.frame_size``, ``window``, ``rto``,
    ``sched``, ``faults``, ``spool_lost`` and ``encoder`` are read when scraped.
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry()
        self.encode_seconds = Histogram("satgw_sender_encode_seconds",
                                        "Wall seconds to rate-control, encode and packetize one image",
                                        buckets=ENCODE_BUCKETS, registry=self.registry)
        self._lock = threading.Lock()
        self._encode_failed = 0
        self.registry.register(self)

    def encoded(self, seconds: float) -> None:
        """The encoder finished one image in ``seconds`` (encoder thread)."""
        self.encode_seconds.observe(seconds)

    def encode_failed(self) -> None:
        """The encoder failed one image (encoder thread)."""
        with self._lock:
            self._encode_failed += 1

    def collect(self) -> Iterator[Metric]:
        """Everything read at scrape time (prometheus_client's collector protocol)."""
        d = self.daemon
        counters = snapshot(d.counters)
        counters["failed_transmit"] = counters.get("failed", 0) - counters.get("failed_by_ground", 0)
        for fam in counter_families(COUNTERS, counters):
            if fam.name + "_total" == _FAILED:
                fam.add_metric(["encode"], float(self._encode_failed))
            yield fam
        yield from database_families("satgw_sender_spool", d.cfg.spool, STATES, "spool",
                                     "Messages in the spool by state (accepted, encoded, in_flight and held are the queue)")
        yield gauge("satgw_sender_scheduled_messages", "Messages being transmitted or waiting for the link",
                    len(d.sched))
        yield from link_families("satgw_sender", d.window, d.codec.frame_size, counters.get("frames_sent", 0),
                                 "sent", "the sender sees")
        yield gauge("satgw_sender_rto_seconds", "Current retransmit timeout (wall seconds)", d.rto.rto)
        yield from fault_families("satgw_sender", d.faults, RESOURCES)
        yield gauge("satgw_sender_accepting", "1 while the sender takes new jobs; 0 once its spool file was deleted "
                    "or replaced (restart it)", 1 if d.spool_lost is None else 0)
        yield gauge("satgw_sender_encoder_failed_rounds", "Encoder rounds the spool refused (or a bug ended) since start",
                    d.encoder.failures)
