"""The ground station's Prometheus metrics (served at ``metrics.listen``; names in ``docs/metrics.md``).

Counters come from the daemon's ``counters`` map at scrape time (one source
of truth with ``satgw status``); messages by state and the frame store's
size are read through a read-only connection of the scrape thread. Each
delivered picture is recorded as it is written (:meth:`GroundMetrics.delivered`):
decode time, bytes on air and end-to-end latency histograms.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from gateway.daemon.metrics import database_families, fault_families, link_families
from gateway.store.framestore import STATES
from gateway.transport.metrics_http import CounterSpec, counter_families, gauge, snapshot

_REJECTED = "satgw_ground_frames_rejected_total"
_REJECTED_HELP = ("Frames dropped before the frame store, by reason (crc: bit errors on the link; auth: forged or "
                  "foreign; replay: recorded and played again)")
#: The frame error classes the daemon counts (``bad_<class>``) and the reason label each one gets.
REJECT_REASONS = {"CRCError": "crc", "AuthError": "auth", "FrameSizeError": "size", "BadMagic": "magic",
                  "BadVersion": "version", "HeaderError": "header", "FrameError": "malformed", "ReplayError": "replay",
                  "other": "other"}

COUNTERS = (
    CounterSpec("frames_in", "satgw_ground_frames_received_total",
                "Frames that arrived from the link, good or bad, duplicates included"),
    *(CounterSpec(f"bad_{cls}", _REJECTED, _REJECTED_HELP, (("reason", reason),))
      for cls, reason in REJECT_REASONS.items()),
    CounterSpec("stored", "satgw_ground_frames_stored_total", "New DATA and PARITY frames committed to the frame store"),
    CounterSpec("duplicate", "satgw_ground_frames_duplicate_total",
                "Frames that had already arrived (retransmissions whose ACK was lost, link duplicates)"),
    CounterSpec("meta", "satgw_ground_meta_frames_stored_total", "META frames committed"),
    CounterSpec("inconsistent", "satgw_ground_frames_inconsistent_total",
                "Frames whose k/n disagree with their message's first frame"),
    CounterSpec("evicted", "satgw_ground_messages_evicted_total",
                "Incomplete messages dropped to stay under limits.max_pending_messages"),
    CounterSpec("ack_frames_sent", "satgw_ground_ack_frames_sent_total", "ACK frames sent to the sender"),
    CounterSpec("ack_refused", "satgw_ground_ack_frames_refused_by_link_total",
                "ACK frames the link socket would not take; sent again later"),
    CounterSpec("assembled", "satgw_ground_images_assembled_total", "Messages rebuilt from their frames"),
    CounterSpec("decoded", "satgw_ground_images_delivered_total",
                "Pictures decoded and written to the outbox (PNG + JSON record)"),
    CounterSpec("failed", "satgw_ground_images_failed_total",
                "Messages that failed for good: frames or bitstream unusable (the sender is told: FAILED)"),
    CounterSpec("decoder_crashed", "satgw_ground_decoder_crashes_total",
                "Decoder processes that died or timed out (the message is retried)"),
    CounterSpec("decode_retries", "satgw_ground_decode_retries_total",
                "Decodes the host made fail (outbox full or read-only, memory, the bundle), retried with backoff"),
    CounterSpec("store_errors", "satgw_ground_store_errors_total", "Frame batches the frame store refused"),
    CounterSpec("previews_written", "satgw_ground_previews_written_total",
                "Previews written to the outbox (a revision of a picture decoded from a prefix of its message)"),
    CounterSpec("previews_skipped", "satgw_ground_previews_skipped_total",
                "Preview decodes that wrote nothing (no new layers, codec without prefixes, a revision already there)"),
    CounterSpec("preview_errors", "satgw_ground_preview_errors_total",
                "Prefixes the decoder refused (the message waits for more frames; it is not failed)"),
    CounterSpec("preview_retries", "satgw_ground_preview_retries_total",
                "Preview decodes the host made fail (outbox, memory, bundle), retried with backoff"),
    CounterSpec("preview_crashed", "satgw_ground_preview_crashes_total", "Preview decodes that crashed or hung"),
)

DECODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
FRAME_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
#: The resources the ground station reports to its fault board (gateway.ground.daemon: STORE, DECODE).
RESOURCES = ("frame_store", "decode")


class GroundMetrics:
    """The ground station's registry: a collector over the daemon's state plus per-picture histograms.

    ``daemon`` is the :class:`~gateway.ground.daemon.ReceiverDaemon`; its
    ``counters``, ``cfg.store``, ``codec.frame_size``, ``window``,
    ``decoding``, ``ack_queue``, ``retries``, ``meta_waits``, ``previews`` and ``faults`` are read when scraped.
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry()
        fs = daemon.codec.frame_size
        self.decode_seconds = Histogram("satgw_ground_decode_seconds", "Wall seconds to decode one picture",
                                        buckets=DECODE_BUCKETS, registry=self.registry)
        self.on_air_bytes = Histogram("satgw_ground_image_on_air_bytes",
                                      "Bytes one picture took on the link (its frames x frame size)",
                                      buckets=tuple(n * fs for n in FRAME_COUNTS), registry=self.registry)
        self.latency_seconds = Histogram("satgw_ground_image_latency_seconds",
                                         "Wall seconds from the sender accepting a picture to its decoded PNG",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(self)

    def delivered(self, record: Any) -> None:
        """A picture's :class:`~gateway.ground.output.OutputRecord` was written to the outbox."""
        self.decode_seconds.observe(record.timings.decode_s)
        self.on_air_bytes.observe(record.bytes_on_air)
        if record.timings.latency_s is not None:
            self.latency_seconds.observe(max(0.0, record.timings.latency_s))

    def collect(self) -> Iterator[Metric]:
        """Everything read at scrape time (prometheus_client's collector protocol)."""
        d = self.daemon
        counters = snapshot(d.counters)
        # A frame error class without its own reason label still counts, as "other".
        known = sum(counters.get(f"bad_{cls}", 0) for cls in REJECT_REASONS if cls != "other")
        counters["bad_other"] = max(0, counters.get("bad_frames", 0) - known)
        yield from counter_families(COUNTERS, counters)
        yield from database_families("satgw_ground_frame_store", d.cfg.store, STATES, "frame store",
                                     "Messages in the frame store by state")
        yield gauge("satgw_ground_decoding_messages", "Messages waiting for or in the decoder", len(d.decoding))
        yield gauge("satgw_ground_ack_queue_frames", "ACK frames waiting for the return link", len(d.ack_queue))
        yield gauge("satgw_ground_decode_retrying_messages",
                    "Messages held (every frame in, the sender told HELD) whose decode waits for a retry",
                    len(d.retries))
        yield gauge("satgw_ground_preview_queued_messages",
                    "Messages due a preview, waiting for the decode worker to be idle", d.previews.planner.queued())
        yield gauge("satgw_ground_meta_waiting_messages", "Complete messages waiting a grace period for their META",
                    len(d.meta_waits))
        yield from fault_families("satgw_ground", d.faults, RESOURCES)
        yield from link_families("satgw_ground", d.window, d.codec.frame_size, counters.get("frames_in", 0),
                                 "received", "the ground station sees")
