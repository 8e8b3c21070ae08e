"""The sender's encoding thread: accepted jobs -> rate-controlled bitstream -> frames in the spool.

Rate control and CADC analysis take tens of milliseconds to seconds, so they
run here, off the event loop: a slow encode never stalls pacing or ACKs. The
thread talks to the loop only through the spool (durable) and a queue of
message ids that are ready to send.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

from gateway.daemon.config import SenderConfig
from gateway.errors import SatgwError
from gateway.protocol.meta import MessageMeta
from gateway.store.spool import MessageRow, Spool
from gateway.transport.eventlog import EventLog
from packetizer.errors import PacketizerError
from packetizer.frame import Frame, FrameCodec, FrameType

if TYPE_CHECKING:
    from gateway.sender.metrics import SenderMetrics


class Encoder(threading.Thread):
    """Encodes accepted jobs (rate control + packetizer) and hands their ids to the event loop."""

    def __init__(self, cfg: SenderConfig, codec: FrameCodec, log: EventLog, done: "queue.Queue[int]",
                 metrics: "SenderMetrics | None" = None) -> None:
        super().__init__(name="encoder", daemon=True)
        self.cfg, self.codec, self.log, self.done, self.metrics = cfg, codec, log, done, metrics
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the thread to finish after the job in hand."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        spool = Spool(self.cfg.spool, self.cfg.spool_synchronous)  # its own connection: one per thread
        try:
            while not self.stopping.is_set():
                jobs = spool.list(["accepted"], limit=16)
                for row in jobs:
                    if self.stopping.is_set():
                        break
                    self._encode(spool, row)
                if not jobs:
                    self.wake.wait(1.0)
                    self.wake.clear()
        finally:
            spool.close()

    def _encode(self, spool: Spool, row: MessageRow) -> None:
        from gateway.codec.image_io import read_rgb
        from gateway.codec.registry import get_codec
        from gateway.ratecontrol import Budget, fit
        from packetizer.segment import split_message

        t0 = time.perf_counter()
        try:
            arr = read_rgb(spool.image(row.id), self.cfg.limits.max_pixels)
            budget = Budget.for_frames(row.packets, self.codec, row.parity)
            result = fit(get_codec(row.codec, self.cfg.bundle, encoder_only=True), arr, budget, label=row.source_name)
            frames = split_message(row.id, result.bitstream, self.codec, parity=row.parity)
            k, n = frames[0].k, frames[0].n
            payload = MessageMeta(row.source_name, row.image_size, row.codec, row.accepted_at).pack(
                self.codec.payload_capacity)
            spool.mark_encoded(row.id, result.bitstream, result.as_dict(), frames,
                               Frame(FrameType.META, row.id, 0, k, n, payload))
        except (SatgwError, PacketizerError, OSError, ValueError) as e:
            # Budget errors, undecodable images, bad codec names: the job fails, the daemon goes on.
            self._fail(spool, row, f"{type(e).__name__}: {e}", "warning")
            return
        except Exception as e:  # a codec bug must fail one job, not the daemon
            self._fail(spool, row, f"internal error while encoding: {type(e).__name__}: {e}", "error")
            return
        seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.encoded(seconds)
        self.log.info("encoded", id=row.id, source=row.source_name, codec=row.codec, bytes=result.bytes, k=k, n=n,
                      seconds=round(seconds, 3))
        self.done.put(row.id)

    def _fail(self, spool: Spool, row: MessageRow, reason: str, level: str) -> None:
        spool.mark_failed(row.id, reason)
        if self.metrics is not None:
            self.metrics.encode_failed()
        self.log.log(level, "encode_failed", id=row.id, source=row.source_name, reason=reason)
