"""The ground station's previews: which message to preview next, its decode job, and what each outcome means.

Glue between the :class:`~gateway.ground.previews.PreviewPlanner` (when),
the frame store (the intact prefix, the revisions written) and the decode
worker (the job). Previews never stand in the way of complete pictures: one
is submitted only when the worker has nothing else to do, one at a time, so
a complete decode waits at most for the one preview already running; and no
preview outcome changes a message's state or what its ACK says (RECEIVING
until its complete picture is written). A preview that fails for a reason of
the host is retried with backoff (:class:`~gateway.ground.retries.DecodeRetries`);
one whose prefix the decoder refuses is left until more frames come; one
that crashes the decoder twice is not tried again.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from gateway.codec import bitstream
from gateway.daemon.config import PreviewSettings
from gateway.errors import BitstreamError
from gateway.ground.decode_worker import DecodeOutcome
from gateway.ground.output import DecodeJob, OutputRecord, PreviewSkipped, PreviewSpec
from gateway.ground.previews import PreviewPlanner, intact_prefix, intact_prefix_length
from gateway.ground.retries import DecodeRetries
from gateway.protocol.meta import MessageMeta
from gateway.store.framestore import FrameStore, StoredMessage
from gateway.store.revisions import Revision
from gateway.transport.eventlog import EventLog
from packetizer.errors import PacketizerError

#: Builds the decode job of a preview: (message, prefix bytes, revision, spec) -> job.
JobFactory = Callable[[StoredMessage, bytes, int, PreviewSpec], DecodeJob]


class PreviewDecodes:
    """Previews of the messages a :class:`FrameStore` is receiving (times: monotonic seconds unless named wall)."""

    def __init__(self, settings: PreviewSettings, store: FrameStore, log: EventLog, counters: Counter,
                 make_job: JobFactory, retry_initial_s: float, retry_max_s: float) -> None:
        self.settings, self.store, self.log, self.counters = settings, store, log, counters
        self.make_job = make_job
        self.planner = PreviewPlanner()
        self.retries = DecodeRetries(retry_initial_s, retry_max_s)
        self.in_flight: tuple[int, int, int] | None = None  # (message id, frames used, codec id) being decoded
        self._no_preview_codecs: set[int] = set()  # codec ids whose decoder said it cannot decode prefixes
        self._expires: dict[int, float | None] = {}  # message id -> its sender's give-up time (wall), once known

    # --- frames and the link ----------------------------------------------------------------

    def on_frames(self, message_ids: set[int], now: float, time_scale: float) -> None:
        """Frames (or a META) of these messages were stored: each receiving one is due after its quiet time."""
        if not self.settings.enabled:
            return
        quiet = self.settings.quiet_s / time_scale
        for mid in message_ids:
            if self.store.state(mid) != "receiving":
                continue
            deadline = now + quiet
            expires = self._expiry(mid)
            if expires is not None:  # the sender gives it up soon: show what there is before it does
                deadline = min(deadline, now + (expires - self.settings.lifetime_margin_s - time.time()))
            self.planner.touch(mid, deadline)

    def rescale(self, now: float, time_scale: float) -> None:
        """The link's time scale became known: no quiet time set before then may outlast one at this scale."""
        if self.settings.enabled:
            self.planner.cap(now + self.settings.quiet_s / time_scale)

    def _expiry(self, mid: int) -> float | None:
        if mid not in self._expires and self.store.has_meta(mid):
            self._expires[mid] = MessageMeta.unpack(self.store.message(mid).meta).expires_at
        return self._expires.get(mid)

    def on_pass_end(self, now: float) -> None:
        """The link went down: preview at once every message that got frames since its last preview."""
        n = self.planner.force_all(now)
        if n:
            self.log.info("previews_due", reason="the link's pass ended", messages=n)

    def forget(self, mid: int) -> None:
        """``mid`` left ``receiving`` (assembled, failed, evicted): no more previews of it."""
        self.planner.forget(mid)
        self.retries.succeeded(mid)
        self._expires.pop(mid, None)

    # --- the loop -----------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next preview (or preview retry) falls due, for the loop's sleep."""
        dues = [d for d in (self.planner.next_due(), self.retries.next_due()) if d is not None]
        return min(dues) if dues else None

    def turn(self, now: float, worker_idle: bool, submit: Callable[[DecodeJob], None]) -> None:
        """Queue what fell due; when the worker is idle and no preview runs, submit the next one."""
        if not self.settings.enabled:
            return
        for mid in self.retries.due(now):
            self.planner.force(mid, now)
        self.planner.due(now)
        if not worker_idle or self.in_flight is not None:
            return
        while (mid := self.planner.pop_ready()) is not None:
            job = self._job(mid)
            if job is not None:
                submit(job)
                return

    def _job(self, mid: int) -> DecodeJob | None:
        """The preview job of ``mid`` if its intact prefix is longer than any preview tried so far."""
        if self.store.state(mid) != "receiving":
            self.forget(mid)
            return None
        msg = self.store.message(mid)
        st = self.store.ack_state(mid)
        latest = self.store.latest_revision(mid)
        j = intact_prefix_length(st.received if st is not None else (), msg.k)
        done = max(latest.frames_used if latest else 0, self.planner.tried_frames(mid))
        self.planner.idle(mid)  # due again only when another frame comes (or a retry falls due)
        if j < self.settings.min_frames or j <= done:
            return None
        try:
            j, data = intact_prefix(self.store.frames_of(mid), msg.k)
            header, _ = bitstream.unpack(data)
        except (PacketizerError, BitstreamError) as e:  # frame 0 holds no header we read: no preview, ever
            self.planner.never(mid)
            self.log.info("preview_skipped", id=mid, reason=f"its first frame is not a bitstream we read ({e})")
            return None
        if header.codec_id in self._no_preview_codecs:
            self.planner.never(mid)
            return None
        revision = (latest.revision if latest else 0) + 1
        spec = PreviewSpec(j, (latest.layers or 0) if latest else 0)
        self.in_flight = (mid, j, header.codec_id)
        return self.make_job(msg, data, revision, spec)

    # --- outcomes -----------------------------------------------------------------------------

    def on_outcome(self, outcome: DecodeOutcome, now: float) -> str | None:
        """Digest a preview job's outcome; returns a host failure's reason (for the fault board), else None.

        Raises :class:`~gateway.errors.StoreError` when the store cannot record a written preview (the
        next attempt finds it in the outbox and records it then).
        """
        mid = outcome.message_id
        frames, codec_id = (self.in_flight[1], self.in_flight[2]) if self.in_flight else (0, -1)
        self.in_flight = None
        if outcome.status == "ok" and isinstance(outcome.record, OutputRecord):
            self.retries.succeeded(mid)
            self._written(outcome.record)
        elif outcome.status == "ok" and isinstance(outcome.record, PreviewSkipped):
            self.retries.succeeded(mid)
            self._skipped(outcome.record, frames, codec_id, now)
        elif outcome.status == "retry":
            retry = self.retries.failed(mid, outcome.reason or "", now)
            self.counters["preview_retries"] += 1
            if retry.failures & (retry.failures - 1) == 0:  # the 1st, 2nd, 4th ... failure: no flood
                self.log.warning("preview_retry", id=mid, reason=outcome.reason, failures=retry.failures)
            return outcome.reason or "preview decode failed"
        elif outcome.status == "crashed":
            self.counters["preview_crashed"] += 1
            gave_up = self.planner.crashed(mid)
            self.log.error("preview_crashed", id=mid, reason=outcome.reason, gave_up=gave_up)
        else:  # the decoder refused this prefix: wait for more frames, the message itself is not failed
            self.planner.tried(mid, frames)
            self.counters["preview_errors"] += 1
            self.log.warning("preview_failed", id=mid, frames=frames, reason=outcome.reason)
        return None

    def _written(self, rec: OutputRecord) -> None:
        mid = rec.message_id
        self.planner.tried(mid, rec.frames_used)
        self.store.record_preview(Revision(mid, rec.revision, False, rec.frames_used, rec.frames_data,
                                           rec.layers_decoded, rec.layers_total, rec.timings.decoded_at))
        self.counters["previews_written"] += 1
        self.log.info("preview_written", id=mid, revision=rec.revision, frames=f"{rec.frames_used} of {rec.frames_data}",
                      layers=f"{rec.layers_decoded} of {rec.layers_total}", decode_s=rec.timings.decode_s)

    def _skipped(self, skip: PreviewSkipped, frames: int, codec_id: int, now: float) -> None:
        mid, disk = skip.message_id, skip.on_disk
        self.counters["previews_skipped"] += 1
        if skip.reason == "not_progressive":
            self._no_preview_codecs.add(codec_id)
            self.planner.never(mid)
            return
        if skip.reason == "superseded" and disk.complete:
            self.planner.never(mid)  # the outbox holds its complete picture already (a wiped frame store?)
            return
        if skip.reason == "superseded":
            # The outbox holds a revision the store had not recorded (the daemon died between the two): record
            # it now, and try again at once if this prefix is longer than that revision's.
            if disk.revision > 0:
                self.store.record_preview(_revision_on_disk(mid, disk.record or {}, disk.revision))
            self.planner.tried(mid, min(frames, disk.frames_used))
            if frames > disk.frames_used:
                self.planner.force(mid, now)
            return
        self.planner.tried(mid, frames)  # no_picture_yet, no_new_layers: wait for more frames

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``satgw status`` shows of previews."""
        now = time.monotonic()
        return {
            "enabled": self.settings.enabled,
            "written": self.counters.get("previews_written", 0),
            "queued": self.planner.queued(),
            "decoding": None if self.in_flight is None else self.in_flight[0],
            "retrying": [{"id": r.message_id, "reason": r.reason, "failures": r.failures,
                          "retry_in_s": round(max(0.0, r.due - now), 2)} for r in self.retries.waiting()],
        }


def _revision_on_disk(mid: int, record: dict[str, Any], revision: int) -> Revision:
    """The :class:`Revision` an outbox record describes (fields it lacks read as unknown)."""
    def num(key: str) -> int | None:
        v = record.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
    at = timings.get("decoded_at") if isinstance(timings, dict) else None
    return Revision(mid, revision, False, num("frames_used") or 0, num("frames_data") or 0, num("layers_decoded"),
                    num("layers_total"), float(at) if isinstance(at, (int, float)) else time.time())
