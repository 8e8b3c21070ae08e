"""The sender's encoding thread: accepted jobs -> rate-controlled bitstream -> frames in the spool.

Rate control and CADC analysis take tens of milliseconds to seconds, so they
run here, off the event loop: a slow encode never stalls pacing or ACKs. The
thread talks to the loop only through the spool (durable) and a queue of
message ids that are ready to send.

The thread never dies of a failure: a job the encoder cannot do (a bad image,
no setting fits) fails with its reason; a spool that cannot be written (disk
full, read-only) leaves the job ``accepted``, is reported to the fault board,
and the thread tries again after a pause that doubles up to
:data:`MAX_PAUSE_S`, so jobs move again as soon as space returns.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

from gateway.daemon.config import SenderConfig
from gateway.daemon.faults import FaultBoard
from gateway.errors import SatgwError
from gateway.protocol.meta import MessageMeta
from gateway.ratecontrol.auto import AUTO
from gateway.sender.auto_codecs import AutoCodecs, meta_choice
from gateway.store.spool import MessageRow, Spool
from gateway.transport.eventlog import EventLog
from packetizer.errors import PacketizerError
from packetizer.frame import Frame, FrameCodec, FrameType

if TYPE_CHECKING:
    from gateway.sender.metrics import SenderMetrics

FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 30.0
SPOOL = "spool"  # the resource reported to the fault board


class Encoder(threading.Thread):
    """Encodes accepted jobs (rate control + packetizer) and hands their ids to the event loop."""

    def __init__(
        self, cfg: SenderConfig, codec: FrameCodec, log: EventLog, done: "queue.Queue[int]", faults: FaultBoard,
        metrics: "SenderMetrics | None" = None,
    ) -> None:
        super().__init__(name="encoder", daemon=True)
        self.cfg, self.codec, self.log, self.done, self.faults, self.metrics = cfg, codec, log, done, faults, metrics
        self.wake = threading.Event()
        self.stopping = threading.Event()
        #: ``codec: auto`` (checked now, so a bad candidate list stops the daemon at start).
        self.auto = AutoCodecs(cfg, log)
        self.ladder = self.auto.ladder  #: the CADC models by budget (checked now, like auto)
        self.failures = 0  #: rounds that failed (the spool refused, or a bug) since start

    def stop(self) -> None:
        """Ask the thread to finish after the job in hand."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        spool: Spool | None = None
        pause = FIRST_PAUSE_S
        try:
            while not self.stopping.is_set():
                try:
                    if spool is None:
                        spool = Spool(self.cfg.spool, self.cfg.spool_synchronous)  # its own connection: one per thread
                    busy = self._round(spool)
                except Exception as e:  # the spool refused, or a bug: the jobs stay accepted; try again later
                    self.failures += 1
                    self.faults.report(SPOOL, f"the encoder cannot use the spool: {type(e).__name__}: {e}")
                    self.wake.wait(pause)
                    self.wake.clear()
                    pause = min(MAX_PAUSE_S, pause * 2)
                    continue
                pause = FIRST_PAUSE_S
                if not busy:
                    self.wake.wait(1.0)
                    self.wake.clear()
        finally:
            if spool is not None:
                spool.close()

    def _round(self, spool: Spool) -> bool:
        """Encode up to 16 accepted jobs; False when there were none."""
        jobs = spool.list(["accepted"], limit=16)
        for row in jobs:
            if self.stopping.is_set():
                break
            self._encode(spool, row)
        return bool(jobs)

    def _encode(self, spool: Spool, row: MessageRow) -> None:
        """Encode one job. Spool errors propagate (the job stays accepted); job errors fail the job."""
        from gateway.codec.image_io import read_rgb
        from gateway.codec.registry import get_codec
        from gateway.ratecontrol import Budget, fit
        from packetizer.segment import split_message

        image = spool.image(row.id)
        t0 = time.perf_counter()
        try:
            arr = read_rgb(image, self.cfg.limits.max_pixels)
            budget = Budget.for_frames(row.packets, self.codec, row.parity)
            if row.codec == AUTO:
                choice = self.auto.choose(arr, budget, row.source_name)
                result, record, sent_codec = choice.result, {**choice.result.as_dict(), "auto": choice.as_dict()}, \
                    choice.codec
            else:
                choice = None
                refine = self.cfg.refine_steps if row.codec == "cadc" else 0
                # CADC: the ladder's model for this budget (a classical codec ignores the bundle)
                bundle = self.ladder.bundle_for(budget, arr.shape[1], arr.shape[0]) if row.codec == "cadc" else None
                result = fit(get_codec(row.codec, bundle, encoder_only=True, refine=refine), arr, budget,
                             label=row.source_name)
                record, sent_codec = result.as_dict(), row.codec
            frames = split_message(row.id, result.bitstream, self.codec, parity=row.parity)
            k, n = frames[0].k, frames[0].n
            payload = MessageMeta(row.source_name, row.image_size, sent_codec, row.accepted_at,
                                  expires_at=row.accepted_at + self.cfg.arq.ttl_s,
                                  choice=None if choice is None else meta_choice(choice)).pack(self.codec.payload_capacity)
        except SatgwError as e:  # a bad image, no setting fits: the message says why
            self._fail(spool, row, str(e), "warning")
            return
        except (PacketizerError, OSError, ValueError) as e:
            self._fail(spool, row, f"the image cannot be encoded: {type(e).__name__}: {e}", "warning")
            return
        except Exception as e:  # a codec bug must fail one job, not the thread
            self._fail(spool, row, f"internal error while encoding: {type(e).__name__}: {e}", "error")
            return
        spool.mark_encoded(row.id, result.bitstream, record, frames,
                           Frame(FrameType.META, row.id, 0, k, n, payload))
        seconds = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.encoded(seconds)
        extra = {} if choice is None else {"requested": AUTO, "choice_s": round(choice.seconds, 3),
                                           "expected": round(choice.chosen.value(choice.metric) or 0.0, 4)}
        if "model_id" in result.setting:  # which CADC model (ladder rung) encoded it
            extra["model"] = result.setting["model_id"]
        self.log.info("encoded", id=row.id, source=row.source_name, codec=sent_codec, bytes=result.bytes, k=k, n=n,
                      seconds=round(seconds, 3), **extra)
        self.done.put(row.id)

    def _fail(self, spool: Spool, row: MessageRow, reason: str, level: str) -> None:
        spool.mark_failed(row.id, reason)  # a spool error here propagates: the job is tried again later
        if self.metrics is not None:
            self.metrics.encode_failed()
        self.log.log(level, "encode_failed", id=row.id, source=row.source_name, reason=reason)
