"""The ground-station daemon (``satgw receiver``): frame store, ACKs, reassembly, decode.

:class:`~gateway.daemon.link_attached.LinkAttachedDaemon` runs the event loop
that owns the sockets: the DEALER to the link (frames in, ACK frames out), a
REP control socket for ``satgw status`` and a lazy-pirate REQ to the link's
control socket (return rate, time scale, availability). Order of operations
for every batch of frames: verify (CRC, HMAC, replay window) -> commit to the
frame store -> only then acknowledge. ACK frames are paced at the return
link's rate; between two ACK frames the set of messages to acknowledge grows,
so ACKs batch by themselves under load and go out at once when idle.
Reassembly is :meth:`~gateway.store.framestore.FrameStore.assemble` over the
stored frames; decoding runs in a :class:`~gateway.ground.decode_worker.DecodeWorker`.

"Delivered" means on disk: a message is acknowledged HELD from assembly
until its PNG and JSON are durably written (then DONE), and FAILED only when
its bitstream is itself bad. A decode the host made fail (outbox full or
read-only, memory, the bundle) is retried with backoff
(:class:`~gateway.ground.retries.DecodeRetries`) and shown in ``status``; a
frame store that refuses writes is reported and recovered from without a
restart. At start the daemon checks its CADC bundle and refuses to run with
a broken one (:mod:`gateway.ground.bundle_check`).

A message whose frames stop coming (quiet for ``previews.quiet_s``, its
sender's lifetime nearly over, or the link's pass ended) is written early as
a preview from its intact prefix by a codec that decodes prefixes
(:class:`~gateway.ground.preview_decodes.PreviewDecodes`); each revision
replaces the last, the complete picture last of all. Previews run only when
the decode worker is idle and never change what the sender is told.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from gateway.daemon.config import ReceiverConfig
from gateway.daemon.link_attached import LinkAttachedDaemon
from gateway.errors import BundleError, StoreError
from gateway.ground.bundle_check import CheckCache, check_decoders, fingerprint
from gateway.ground.decode_worker import DecodeOutcome, DecodeWorker
from gateway.ground.meta_waits import MetaWaits
from gateway.ground.metrics import GroundMetrics
from gateway.ground.output import DecodeJob, PreviewSpec, add_source
from gateway.ground.preview_decodes import PreviewDecodes
from gateway.ground.retries import DecodeRetries
from gateway.protocol.pacer import Pacer
from gateway.store.framestore import FrameStore, StoredMessage
from gateway.store.revisions import Revision
from gateway.transport.eventlog import EventLog
from packetizer.ack import AckEntry, pack_acks
from packetizer.errors import PacketizerError

MAX_ACK_QUEUE = 64  # ACK frames waiting for the return link; older ones are superseded by newer state
STATUS_MESSAGES = 100  # messages listed by ``status``
STORE, DECODE = "frame_store", "decode"  # resources reported to the fault board
#: A DONE or FAILED is repeated in the periodic ACKs for this many ACK intervals (the sender's probes cover the rest).
REPEAT_FINISHED = 3


class ReceiverDaemon(LinkAttachedDaemon):
    """The ground station's state and event loop. Create, then :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: ReceiverConfig, log: EventLog, worker: DecodeWorker | None = None) -> None:
        from gateway.codec.cadc.devices import check_device_spec, check_precision

        check_device_spec(cfg.device)  # a typo stops the daemon at start, not at the first picture
        check_precision(cfg.precision)
        self.cfg = cfg
        lim = cfg.limits
        self.store = FrameStore(cfg.store, synchronous=cfg.store_synchronous, max_pending=lim.max_pending_messages,
                                max_frames_per_message=lim.max_frames_per_message)
        self.worker = worker or DecodeWorker(cfg.decode.worker, cfg.decode.timeout_s)
        try:
            self.checked = self._check_bundle(log) if cfg.decode.check_bundle else {"cadc": "not checked"}
            super().__init__("receiver", cfg, log, commands={"status": self._cmd_status}, control_max_bytes=65536,
                             link_state=self.store)
        except BaseException:
            self.worker.close()
            self.store.close()
            raise
        self.ack_pacer = Pacer(1.0, burst=2)
        self.ack_queue: deque[bytes] = deque()
        self.to_ack: set[int] = set()
        self.meta_waits = MetaWaits(lim.max_pending_messages)
        self.retries = DecodeRetries(cfg.decode.retry_initial_s, cfg.decode.retry_max_s)
        self.assemble_again: set[int] = set()  # ready messages whose assembly the store refused
        self.decoding: set[int] = set()
        self.counters: Counter = Counter()
        self.previews = PreviewDecodes(cfg.previews, self.store, log, self.counters, self._preview_job,
                                       cfg.decode.retry_initial_s, cfg.decode.retry_max_s)
        self._next_periodic = 0.0
        self._timer_scale = 1.0  # the time scale the pending META waits and preview deadlines were set with
        self.metrics = GroundMetrics(self)
        self._serve_metrics(self.metrics.registry)

    def _check_bundle(self, log: EventLog) -> dict[str, Any]:
        """Round-trip a test picture through the decoders where decodes run; BundleError when broken.

        ``bundle: null`` stands for every embedded model (the sender's model ladder uses them all), so each
        is checked; the first one's record is the answer, the others' are listed under ``also``.
        """
        from gateway.codec.registry import cadc_bundles

        records = [self._check_one(bundle, log) for bundle in cadc_bundles((self.cfg.bundle,))]
        first = dict(records[0])
        if len(records) > 1:
            first["also"] = [r.get("cadc") for r in records[1:]]
        return first

    def _check_one(self, bundle: Any, log: EventLog) -> dict[str, Any]:
        """One bundle's check; skipped when these exact bundle bytes passed before on this host
        (:class:`CheckCache`)."""
        bundle = None if bundle is None else str(bundle)
        cache, key = CheckCache(), fingerprint(bundle)
        known = cache.get(key)
        if known is not None:
            log.info("bundle_checked", cached=True, **known)
            return known
        outcome = self.worker.check(check_decoders, bundle, self.cfg.decode.timeout_s)
        if outcome.status != "ok":
            raise BundleError(f"refusing to start: {outcome.reason}")
        log.info("bundle_checked", cached=False, **outcome.record)
        if isinstance(outcome.record.get("cadc"), dict):
            cache.put(key, outcome.record)
        return outcome.record

    def _scale(self) -> float:
        return self.window.time_scale or 1.0

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """Resume what the frame store holds, then serve until :meth:`stop`; returns the exit status."""
        for mid in self.store.with_state("assembled"):
            self._submit_decode(mid)
        now = time.monotonic()
        receiving = self.store.with_state("receiving")
        for mid in receiving:
            st = self.store.ack_state(mid)
            if st is not None and len(st.received) >= self.store.message(mid).k:
                self._on_ready(mid, now)
        # What was arriving before a restart is previewed after a quiet time, unless more of it comes first.
        self.previews.on_frames(set(receiving), now, self._scale())
        self.log.info("start", store=self.cfg.store, outbox=self.cfg.outbox, link=self.cfg.link.endpoint,
                      hmac=self.codec.auth_key is not None, curve=self.curve is not None, counts=self.store.counts())
        return super().run()

    def _shutdown(self) -> None:
        self.log.info("stop", **self.counters)
        self.worker.close()
        self.store.close()

    # --- the loop's hooks -------------------------------------------------------------------

    def _wait_s(self, now: float, link_timer: float) -> float:
        wait = max(0.0, min(link_timer, self._next_periodic) - now)
        if self.ack_queue or self.to_ack:
            wait = min(wait, self.ack_pacer.wait(now))
        if self.decoding:
            wait = min(wait, 0.02)  # the worker's results are polled
        for due in (self.meta_waits.next_due(), self.retries.next_due(), self.previews.next_due()):
            if due is not None:
                wait = min(wait, max(0.0, due - now))
        return min(wait, 0.1)

    def _on_link_frames(self) -> None:
        self._receive()

    def _turn(self, now: float) -> None:
        if now >= self._next_periodic:
            ack, wall = self.cfg.ack, time.time()
            self.to_ack.update(self.store.active_since(wall - ack.active_s / self._scale(),
                                                       wall - REPEAT_FINISHED * ack.interval_s / self._scale()))
            self._next_periodic = now + ack.interval_s / self._scale()
            for mid in list(self.assemble_again):
                self.assemble_again.discard(mid)
                self._assemble(mid)
        for mid in self.meta_waits.due(now):
            self._assemble(mid)
        for mid in self.retries.due(now):
            self._submit_decode(mid)
        self._collect_decodes()
        # Previews only when the worker has nothing else to do: they never delay a complete picture.
        self.previews.turn(now, not self.decoding and self.worker.pending() == 0, self.worker.submit)
        self._send_acks()

    def _on_link_down(self) -> None:
        self.previews.on_pass_end(time.monotonic())

    def _apply_rates(self) -> None:
        rate = self.window.return_rate_bps
        if rate:
            self.ack_pacer.set_interval(self.codec.frame_size * 8.0 / rate / self._scale())
        scale = self._scale()
        if scale != self._timer_scale:
            # Waits resumed at start were timed before the link said its time scale (as if 1): at 40 a
            # 300 s META grace would hold a restarted ground's message for 300 wall seconds, not 7.5.
            now = time.monotonic()
            self.meta_waits.cap(now + self.cfg.ack.meta_grace_s / scale)
            self.previews.rescale(now, scale)
            self._next_periodic = min(self._next_periodic, now + self.cfg.ack.interval_s / scale)
            self._timer_scale = scale

    # --- frames in --------------------------------------------------------------------------

    def _receive(self) -> None:
        batch = []
        for _ in range(self.cfg.limits.max_batch_frames):
            raw = self.peer.recv_frame()
            if raw is None:
                break
            self.counters["frames_in"] += 1
            try:
                batch.append(self.codec.unpack(raw))
            except PacketizerError as e:
                # CRC errors are the link's bit errors; AuthError means a forged or foreign frame,
                # ReplayError a recorded one played again.
                self.counters["bad_" + type(e).__name__] += 1
                self.counters["bad_frames"] += 1
                self.log.throttled("bad:" + type(e).__name__, 5, "warning", "bad_frame", error=str(e))
        if not batch:
            return
        now = time.monotonic()
        window = self.codec.replay.state if self.codec.replay is not None else None
        try:
            res = self.store.store_batch(batch, time.time(), window)
        except StoreError as e:  # nothing stored, nothing acked: the sender repeats once the store takes them
            self.counters["store_errors"] += 1
            self.faults.report(STORE, str(e))
            return
        self.faults.clear(STORE)
        self.counters.update(res.counts)
        self.to_ack |= res.touched | res.complete_seen
        for mid in res.evicted:
            self.meta_waits.discard(mid)
            self.previews.forget(mid)
        self.previews.on_frames(res.touched, now, self._scale())
        for mid in res.late_meta:
            self._add_source(mid)
        for mid in res.ready:
            self._on_ready(mid, now)

    def _add_source(self, mid: int) -> None:
        """A META frame came after the picture was written without it: put the file name in the record."""
        try:
            if add_source(self.cfg.outbox, mid, self.store.message(mid).meta):
                self.log.info("record_updated", id=mid, note="the META frame came late; source name added")
        except (OSError, StoreError) as e:
            self.log.warning("record_update_failed", id=mid, error=str(e))

    def _on_ready(self, mid: int, now: float) -> None:
        """``mid`` holds at least k frames: assemble it, or first wait a grace period for its META frame."""
        if self.store.state(mid) != "receiving":
            return
        if not self.store.has_meta(mid):
            if mid not in self.meta_waits:
                for cut in self.meta_waits.start(mid, now + self.cfg.ack.meta_grace_s / self._scale()):
                    self._assemble(cut)  # the wait list is full: the oldest wait ends early
            return
        self._assemble(mid)

    def _assemble(self, mid: int) -> None:
        self.meta_waits.discard(mid)
        if self.store.state(mid) != "receiving":
            return
        try:
            data = self.store.assemble(mid, time.time())
        except PacketizerError as e:
            self._fail(mid, f"frames do not assemble: {e}")
            return
        except StoreError as e:
            self.faults.report(STORE, str(e))
            self.assemble_again.add(mid)
            return
        if data is None:
            return
        self.previews.forget(mid)
        self.counters["assembled"] += 1
        self.to_ack.add(mid)  # HELD: committed before this ACK can go out
        self.log.info("assembled", id=mid, bytes=len(data))
        self._submit_decode(mid)

    def _fail(self, mid: int, reason: str) -> None:
        """The message's bitstream is bad: it fails for good and the sender is told (FAILED)."""
        self.meta_waits.discard(mid)
        self.previews.forget(mid)
        try:
            self.store.mark_failed(mid, reason, time.time())
        except StoreError as e:  # the store cannot record it now: decide again later
            self.faults.report(STORE, str(e))
            self.retries.failed(mid, f"cannot record the failure ({e})", time.monotonic())
            return
        self.retries.succeeded(mid)
        self.counters["failed"] += 1
        self.to_ack.add(mid)
        self.log.warning("failed", id=mid, reason=reason)

    # --- decoding ---------------------------------------------------------------------------

    def _submit_decode(self, mid: int) -> None:
        if mid in self.decoding or self.store.state(mid) != "assembled":
            return
        try:
            attempts = self.store.note_attempt(mid)
        except StoreError as e:
            self.faults.report(STORE, str(e))
            self.retries.failed(mid, str(e), time.monotonic())
            return
        if attempts > self.cfg.decode.max_attempts:
            self._fail(mid, f"decoder crashed or timed out {attempts - 1} times on this bitstream")
            return
        bitstream = self.store.bitstream(mid)
        if bitstream is None:
            self._fail(mid, "assembled message has no bitstream in the store")
            return
        self.decoding.add(mid)
        latest = self.store.latest_revision(mid)
        self.worker.submit(self._job(self.store.message(mid), bitstream, (latest.revision if latest else 0) + 1))

    def _job(self, message: StoredMessage, data: bytes, revision: int, preview: PreviewSpec | None = None) -> DecodeJob:
        return DecodeJob(message, data, self.cfg.outbox, self.codec.frame_size, self.cfg.bundle,
                         max_pixels=self.cfg.limits.max_image_pixels, bundles=self.cfg.decode_bundles,
                         device=self.cfg.device, precision=self.cfg.precision, revision=revision, preview=preview)

    def _preview_job(self, message: StoredMessage, data: bytes, revision: int, spec: PreviewSpec) -> DecodeJob:
        return self._job(message, data, revision, spec)

    def _collect_decodes(self) -> None:
        for outcome in self.worker.poll():
            if outcome.preview:
                try:
                    failed = self.previews.on_outcome(outcome, time.monotonic())
                except StoreError as e:  # written but not recorded: the next attempt finds it in the outbox
                    self.faults.report(STORE, str(e))
                    self.previews.retries.failed(outcome.message_id, str(e), time.monotonic())
                    continue
                if failed is not None:
                    self.faults.report(DECODE, failed)
                continue
            self.decoding.discard(outcome.message_id)
            try:
                self._on_outcome(outcome)
            except StoreError as e:  # e.g. done but the store cannot say so yet: decode again later
                self.faults.report(STORE, str(e))
                self.retries.failed(outcome.message_id, str(e), time.monotonic())

    def _on_outcome(self, outcome: DecodeOutcome) -> None:
        mid = outcome.message_id
        if outcome.status == "ok":
            rec = outcome.record
            self.store.mark_done(mid, {"bpp": rec.bpp, "codec": rec.codec}, time.time(),
                                 Revision(mid, rec.revision, True, rec.frames_used or rec.frames_data,
                                          rec.frames_data, rec.layers_decoded, rec.layers_total,
                                          rec.timings.decoded_at))
            self.retries.succeeded(mid)
            self.faults.clear(DECODE)
            self.to_ack.add(mid)  # DONE: the picture is on disk
            self.counters["decoded"] += 1
            self.metrics.delivered(rec)
            self.log.info("decoded", id=mid, source=rec.source_name, codec=rec.codec, bpp=rec.bpp,
                          decode_s=rec.timings.decode_s)
            if rec.source_name is None and self.store.has_meta(mid):
                self._add_source(mid)  # the META frame came while the picture was being decoded
        elif outcome.status == "error":
            self._fail(mid, f"decode failed: {outcome.reason}")
        elif outcome.status == "retry":
            self.store.release_attempt(mid)
            retry = self.retries.failed(mid, outcome.reason or "", time.monotonic())
            self.counters["decode_retries"] += 1
            self.faults.report(DECODE, outcome.reason or "")
            if retry.failures & (retry.failures - 1) == 0:  # the 1st, 2nd, 4th, 8th ... failure: no flood
                self.log.warning("decode_retry", id=mid, reason=outcome.reason, failures=retry.failures,
                                 retry_in_s=round(retry.due - time.monotonic(), 2))
        else:
            self.counters["decoder_crashed"] += 1
            self.log.error("decoder_crashed", id=mid, reason=outcome.reason)
            self._submit_decode(mid)

    # --- ACKs out ---------------------------------------------------------------------------

    def _send_acks(self) -> None:
        now = time.monotonic()
        if not self.window.can_send(now, self.ack_pacer.interval):
            return
        if not self.ack_queue and self.to_ack:
            entries = []
            for mid in sorted(self.to_ack):
                st = self.store.ack_state(mid)
                if st is not None:
                    entries.append(AckEntry(st.message_id, st.n, st.received, st.status, st.reason))
            self.to_ack.clear()
            if entries:
                try:
                    self.ack_queue.extend(pack_acks(entries, self.codec))
                except PacketizerError as e:
                    self.log.error("ack_pack_error", error=str(e))
                while len(self.ack_queue) > MAX_ACK_QUEUE:
                    self.ack_queue.popleft()
        while self.ack_queue and self.ack_pacer.ready(now):
            if not self.peer.send_frame(self.ack_queue[0]):
                self.counters["ack_refused"] += 1
                return
            self.ack_queue.popleft()
            self.ack_pacer.sent(now)
            self.counters["ack_frames_sent"] += 1

    # --- commands ---------------------------------------------------------------------------

    def _cmd_status(self, req: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "ok": True,
            "counts": self.store.counts(),
            "counters": dict(self.counters),
            "messages": self.store.recent(STATUS_MESSAGES),
            "decoding": len(self.decoding),
            "waiting_meta": len(self.meta_waits),
            "retrying": [{"id": r.message_id, "reason": r.reason, "failures": r.failures,
                          "retry_in_s": round(max(0.0, r.due - now), 2)} for r in self.retries.waiting()],
            "faults": self.faults.snapshot(),
            "previews": self.previews.status(),
            "bundle": self.checked,
            "link": self._link_status(),
        }
