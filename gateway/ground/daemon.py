"""The ground-station daemon (``satgw receiver``): frame store, ACKs, reassembly, decode.

:class:`~gateway.daemon.link_attached.LinkAttachedDaemon` runs the event loop
that owns the sockets: the DEALER to the link (frames in, ACK frames out), a
REP control socket for ``satgw status`` and a lazy-pirate REQ to the link's
control socket (return rate, time scale, availability). Order of operations
for every batch of frames: verify (CRC, HMAC) -> commit to the frame store ->
only then acknowledge. ACK frames are paced at the return link's rate;
between two ACK frames the set of messages to acknowledge grows, so ACKs
batch by themselves under load and go out at once when idle. Reassembly is
:meth:`~gateway.store.framestore.FrameStore.assemble` over the stored frames; decoding runs in a
:class:`~gateway.ground.decode_worker.DecodeWorker`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from gateway.daemon.config import ReceiverConfig
from gateway.daemon.link_attached import LinkAttachedDaemon
from gateway.ground.decode_worker import DecodeWorker
from gateway.ground.metrics import GroundMetrics
from gateway.ground.output import DecodeJob
from gateway.protocol.pacer import Pacer
from gateway.store.framestore import FrameStore
from gateway.transport.eventlog import EventLog
from packetizer.ack import AckEntry, pack_acks
from packetizer.errors import PacketizerError

MAX_ACK_QUEUE = 64  # ACK frames waiting for the return link; older ones are superseded by newer state
STATUS_MESSAGES = 100  # messages listed by ``status``


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
        super().__init__("receiver", cfg, log, commands={"status": self._cmd_status}, control_max_bytes=65536)
        self.ack_pacer = Pacer(1.0, burst=2)
        self.ack_queue: deque[bytes] = deque()
        self.to_ack: set[int] = set()
        self.waiting_meta: dict[int, float] = {}  # message id -> wall time it stops waiting for META
        self.decoding: set[int] = set()
        self.worker = worker or DecodeWorker(cfg.decode.worker, cfg.decode.timeout_s)
        self.counters: Counter = Counter()
        self._next_periodic = 0.0
        self.metrics = GroundMetrics(self)
        self._serve_metrics(self.metrics.registry)

    def _scale(self) -> float:
        return self.window.time_scale or 1.0

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """Resume what the frame store holds, then serve until :meth:`stop`; returns the exit status."""
        for mid in self.store.with_state("assembled"):
            self._submit_decode(mid)
        for mid in self.store.with_state("receiving"):
            st = self.store.ack_state(mid)
            if st is not None and len(st.received) >= self.store.message(mid).k:
                self._try_assemble(mid, time.monotonic())
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
        if self.decoding or self.waiting_meta:
            wait = min(wait, 0.02)
        return min(wait, 0.1)

    def _on_link_frames(self) -> None:
        self._receive()

    def _turn(self, now: float) -> None:
        if now >= self._next_periodic:
            ack = self.cfg.ack
            self.to_ack.update(self.store.active_since(time.time() - ack.active_s / self._scale()))
            self._next_periodic = now + ack.interval_s / self._scale()
        self._check_meta_waits(now)
        self._collect_decodes()
        self._send_acks()

    def _apply_rates(self) -> None:
        rate = self.window.return_rate_bps
        if rate:
            self.ack_pacer.set_interval(self.codec.frame_size * 8.0 / rate / self._scale())

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
                # CRC errors are the link's bit errors; AuthError means a forged or foreign frame.
                self.counters["bad_" + type(e).__name__] += 1
                self.counters["bad_frames"] += 1
                self.log.throttled("bad:" + type(e).__name__, 5, "warning", "bad_frame", error=str(e))
        if not batch:
            return
        now = time.monotonic()
        try:
            res = self.store.store_batch(batch, time.time())
        except Exception as e:  # sqlite3 errors: nothing stored, nothing acked; the sender repeats
            self.counters["store_errors"] += 1
            self.log.error("store_error", error=f"{type(e).__name__}: {e}")
            return
        self.counters.update(res.counts)
        self.to_ack |= res.touched | res.complete_seen
        for mid in res.ready:
            self._try_assemble(mid, now)

    def _try_assemble(self, mid: int, now: float) -> None:
        if self.store.state(mid) != "receiving":
            return
        if not self.store.has_meta(mid):
            deadline = self.waiting_meta.setdefault(mid, now + self.cfg.ack.meta_grace_s / self._scale())
            if now < deadline:
                return
        self.waiting_meta.pop(mid, None)
        try:
            data = self.store.assemble(mid, time.time())
        except PacketizerError as e:
            self._fail(mid, f"frames do not assemble: {e}")
            return
        if data is None:
            return
        self.counters["assembled"] += 1
        self.to_ack.add(mid)  # complete: committed before this ACK can go out
        self.log.info("assembled", id=mid, bytes=len(data))
        self._submit_decode(mid)

    def _check_meta_waits(self, now: float) -> None:
        for mid, deadline in list(self.waiting_meta.items()):
            if now >= deadline or self.store.has_meta(mid):
                self.waiting_meta.pop(mid, None)
                self.waiting_meta[mid] = now  # expired: assemble without waiting further
                self._try_assemble(mid, now)

    def _fail(self, mid: int, reason: str) -> None:
        self.store.mark_failed(mid, reason, time.time())
        self.counters["failed"] += 1
        self.to_ack.add(mid)
        self.log.warning("failed", id=mid, reason=reason)

    # --- decoding ---------------------------------------------------------------------------

    def _submit_decode(self, mid: int) -> None:
        if mid in self.decoding:
            return
        attempts = self.store.note_attempt(mid)
        if attempts > self.cfg.decode.max_attempts:
            self._fail(mid, f"decoder crashed or timed out {attempts - 1} times on this bitstream")
            return
        bitstream = self.store.bitstream(mid)
        if bitstream is None:
            self._fail(mid, "assembled message has no bitstream in the store")
            return
        self.decoding.add(mid)
        self.worker.submit(DecodeJob(self.store.message(mid), bitstream, self.cfg.outbox, self.codec.frame_size,
                                     self.cfg.bundle, self.cfg.decode_bundles, self.cfg.device, self.cfg.precision))

    def _collect_decodes(self) -> None:
        for outcome in self.worker.poll():
            mid = outcome.message_id
            self.decoding.discard(mid)
            if outcome.status == "ok":
                rec = outcome.record
                assert rec is not None
                self.store.mark_done(mid, {"bpp": rec.bpp, "codec": rec.codec}, time.time())
                self.counters["decoded"] += 1
                self.metrics.delivered(rec)
                self.log.info("decoded", id=mid, source=rec.source_name, codec=rec.codec, bpp=rec.bpp,
                              decode_s=rec.timings.decode_s)
            elif outcome.status == "error":
                self._fail(mid, f"decode failed: {outcome.reason}")
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
                    entries.append(AckEntry(st.message_id, st.n, st.received, st.complete))
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
        return {
            "ok": True,
            "counts": self.store.counts(),
            "counters": dict(self.counters),
            "messages": self.store.recent(STATUS_MESSAGES),
            "decoding": len(self.decoding),
            "link": self._link_status(),
        }
