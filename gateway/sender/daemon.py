"""The sender daemon: spool, encoder thread, paced selective-repeat transmission (``satgw sender``).

One event-loop thread owns every socket (ZeroMQ sockets are single-threaded):
the control REP socket (``satgw send`` / ``satgw status``), the DEALER to the
link (frames out, ACKs in) and a lazy-pirate REQ to the link's control socket
(availability, rate, time scale); :class:`~gateway.daemon.link_attached.LinkAttachedDaemon`
runs that loop. The :class:`~gateway.sender.encoder.Encoder` thread runs the
rate controller and packetizer on accepted jobs; both threads talk only
through the spool (SQLite, durable) and a queue of ids. Which frame goes
next, and what an ACK changed, is :mod:`gateway.protocol`'s sans-IO logic.

A job is ``delivered`` only when the ground says its picture is on disk
(DONE), ``failed`` with the ground's reason when it says the bitstream can
never decode (FAILED), and ``held`` in between. A ``send`` request carries the
client's request id, so a retry after a lost reply gets the same message id
and never a second job. When the spool refuses writes the daemon reports it,
keeps what it holds in memory and recovers by itself; when the spool file is
deleted or replaced under it, it stops accepting (and saves what the open
file holds beside it) instead of writing into a file nobody will read.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

from gateway.daemon.config import SenderConfig
from gateway.daemon.link_attached import LinkAttachedDaemon
from gateway.errors import RequestError, SatgwError, StoreError, StoreUnavailable
from gateway.protocol.pacer import Pacer
from gateway.protocol.rto import RtoEstimator
from gateway.protocol.selective_repeat import META_INDEX, TransmitScheduler
from gateway.sender.acceptance import OPTIONS, check_job
from gateway.sender.auto_codecs import job_codecs
from gateway.sender.encoder import SPOOL, Encoder
from gateway.sender.inbox import Inbox
from gateway.sender.metrics import SenderMetrics
from gateway.store.spool import MAX_REQUEST_ID, Spool
from gateway.transport.eventlog import EventLog
from packetizer.ack import AckStatus, unpack_acks
from packetizer.errors import FrameError, PacketizerError
from packetizer.frame import Frame, FrameType

ACK_DRAIN = 256  # ACK frames read per loop turn before looking at the other sockets
TRANSMIT_BATCH = 64  # frames sent per loop turn at most, so control requests and ACKs are never starved
STATUS_MESSAGES = 200  # messages listed by ``status``
HOUSEKEEPING_S = 1.0
SPOOL_FILE = "spool_file"  # the fault of a spool file deleted or replaced under the daemon
#: Which of two statuses for one message in one ACK frame wins (windows of a big entry are merged).
_RANK = {AckStatus.RECEIVING: 0, AckStatus.HELD: 1, AckStatus.DONE: 2, AckStatus.FAILED: 2}


class SenderDaemon(LinkAttachedDaemon):
    """The sender's state and event loop. Create, then :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: SenderConfig, log: EventLog) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool, cfg.spool_synchronous)
        # The biggest legal request is one image plus a little msgpack framing.
        super().__init__("sender", cfg, log, commands={"send": self._cmd_send, "status": self._cmd_status,
                                                       "limits": self._cmd_limits},
                         control_max_bytes=cfg.limits.max_image_bytes + 65536, link_state=self.spool)
        arq = cfg.arq
        self.rto = RtoEstimator(arq.initial_rto_s, arq.min_rto_s, arq.max_rto_s)
        self._rto_scale: tuple = ()  # (time scale, rates) the RTO bounds were last derived from
        self.sched = TransmitScheduler(self.rto, reorder_frames=arq.reorder_frames,
                                       max_transmissions=arq.max_transmissions, preview_first=arq.preview_first)
        self.pacer = Pacer(1.0, burst=arq.burst_frames)
        self.encoded: queue.Queue[int] = queue.Queue()
        self.metrics = SenderMetrics(self)
        self.encoder = Encoder(cfg, self.codec, log, self.encoded, self.faults, self.metrics)
        self.inbox = Inbox(cfg.inbox, lambda data, name: self._accept(data, name, {}),
                           self.spool.find_active_by_source, log, cfg.limits.max_image_bytes) if cfg.inbox else None
        self.counters = dict.fromkeys(
            ("frames_sent", "retransmissions", "meta_sent", "probes", "ack_frames", "bad_frames", "link_refused",
             "delivered", "failed", "failed_by_ground", "expired", "held", "accepted", "repeated_requests", "refused"), 0)
        self.spool_lost: str | None = None  # why the spool file can no longer be trusted (then no new jobs)
        self._saved_window = self.codec.replay.state if self.codec.replay is not None else None
        # message id -> (DATA/PARITY frames by index, META frame): exactly what the spool holds and the wire gets.
        self._frames: dict[int, tuple[dict[int, Frame], Frame | None]] = {}
        self._in_flight: set[int] = set()
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        self._next_inbox = 0.0
        self._serve_metrics(self.metrics.registry)

    # --- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        """Resume what the spool holds, then serve until :meth:`stop`; returns the exit status."""
        for row in self.spool.list(["encoded", "in_flight", "held"], limit=10_000_000):
            self._queue_message(row.id)
        if self.spool.created:
            self.log.warning("spool_created", spool=self.cfg.spool,
                             note="a new, empty spool: if one existed here before, its undelivered jobs are not in it")
        for rescued in sorted(Path(self.cfg.spool).parent.glob(Path(self.cfg.spool).name + ".rescued-*")):
            self.log.warning("spool_rescue_found", file=str(rescued),
                             note="saved when the spool file was deleted or replaced; to resend its jobs, stop the "
                                  "sender and move it back to the spool path")
        self.encoder.start()
        self.log.info("start", spool=self.cfg.spool, control=self.cfg.control, link=self.cfg.link.endpoint,
                      queued=len(self.sched), hmac=self.codec.auth_key is not None, curve=self.curve is not None)
        return super().run()

    def _shutdown(self) -> None:
        self.log.info("stop", **self.counters)
        self.encoder.stop()
        self._flush_counters()
        self.encoder.join(timeout=5.0)
        self.spool.close()

    def _queue_message(self, mid: int) -> None:
        try:
            row = self.spool.get(mid)
        except StoreError:
            return
        if row.state not in ("encoded", "in_flight", "held") or row.n is None:
            return
        frames = self.spool.frames(mid)
        meta = self.spool.meta_frame(mid)
        self._frames[mid] = ({f.index: f for f in frames}, meta)
        if row.state in ("in_flight", "held"):
            self._in_flight.add(mid)
        self.sched.add(mid, priority=row.priority, created=row.accepted_at, n=row.n, acked=self.spool.acked(mid),
                       has_meta=meta is not None, k=row.k)
        if row.state == "held":
            self.sched.hold(mid, time.monotonic())  # ask the ground how it went

    def _retire(self, mid: int) -> None:
        self.sched.remove(mid)
        self._frames.pop(mid, None)
        self._in_flight.discard(mid)

    # --- the loop's hooks -------------------------------------------------------------------

    def _wait_s(self, now: float, link_timer: float) -> float:
        t = max(0.0, min(link_timer, self._next_housekeeping) - now)
        if self.window.known and self.window.up and len(self.sched):
            t = min(t, self.pacer.wait(now))
            dl = self.sched.next_deadline(now)
            if dl is not None:
                t = min(t, max(0.0, dl - now))
        return min(t, 0.05)

    def _on_link_frames(self) -> None:
        self._drain_acks()

    def _turn(self, now: float) -> None:
        while True:
            try:
                self._queue_message(self.encoded.get_nowait())
            except queue.Empty:
                break
        self._transmit()
        if now >= self._next_housekeeping:
            self._housekeeping()
            self._next_housekeeping = now + HOUSEKEEPING_S
        if self.inbox is not None and now >= self._next_inbox:
            self.inbox.scan()
            self._next_inbox = now + self.cfg.inbox_poll_s

    def _on_link_up(self) -> None:
        self.pacer.reset()  # no credit for the time the link was down

    def _apply_rates(self) -> None:
        interval = self.window.frame_interval(self.codec.frame_size)
        if interval:
            self.pacer.set_interval(interval)
        ts = self.window.time_scale
        key = (ts, self.window.forward_rate_bps, self.window.return_rate_bps)
        if key != self._rto_scale:
            # ARQ timings are configured in link seconds; the estimator works in wall seconds.
            # No ACK can come back before one frame has been serialized each way, so on a
            # slow link (GEO at 2.4 kbit/s: 1.5 s a frame each way) the configured floor and
            # first guess are raised to that: retransmitting earlier only wastes the link.
            arq = self.cfg.arq
            fwd = self.window.frame_interval(self.codec.frame_size) or 0.0
            ret = self.window.frame_interval(self.codec.frame_size, self.window.return_rate_bps) or 0.0
            physics = fwd + ret
            self.rto.set_bounds(max(arq.min_rto_s / ts, 1.5 * physics), arq.max_rto_s / ts)
            if self.rto.samples == 0:
                first = max(arq.initial_rto_s / ts, 3.0 * physics)
                self.rto.rto = min(max(first, self.rto.min), self.rto.max)
            self.sched.rebase_probes(time.monotonic())
            self._rto_scale = key

    # --- transmit ---------------------------------------------------------------------------

    def _transmit(self) -> None:
        frame_wall = self.pacer.interval
        for _ in range(TRANSMIT_BATCH):
            now = time.monotonic()
            if not self.window.can_send(now, frame_wall) or not self.pacer.ready(now):
                return
            pick = self.sched.next(now)
            if pick is None:
                return
            data = self._pack(pick.message_id, pick.index)
            if data is None:
                continue
            if not self.peer.send_frame(data):
                self.counters["link_refused"] += 1
                return  # not connected to the link (or its queue is full): try again next turn
            probe = self.sched.is_held(pick.message_id)
            self.sched.sent(pick.message_id, pick.index, now)
            self.pacer.sent(now)
            self.counters["frames_sent"] += 1
            if probe:
                self.counters["probes"] += 1
            elif pick.index == META_INDEX:
                self.counters["meta_sent"] += 1
            if pick.retransmission and not probe:
                self.counters["retransmissions"] += 1
            if pick.message_id not in self._in_flight:
                self._in_flight.add(pick.message_id)
                try:
                    self.spool.mark_in_flight(pick.message_id, time.time())
                except StoreError:
                    pass  # already in flight after a restart

    def _pack(self, mid: int, index: int) -> bytes | None:
        entry = self._frames.get(mid)
        if entry is None:
            self.sched.remove(mid)
            return None
        frames, meta = entry
        frame = meta if index == META_INDEX else frames.get(index)
        try:
            if frame is None:
                raise KeyError(index)
            return self.codec.pack(frame)
        except (PacketizerError, KeyError) as e:
            self._fail(mid, f"stored frame {index} cannot be packed ({e}); was frame.size or tag_len changed?")
            return None

    def _fail(self, mid: int, reason: str, by_ground: bool = False) -> None:
        try:
            self.spool.mark_failed(mid, reason)
        except StoreUnavailable as e:  # kept: failed again (and recorded) once the spool takes writes
            self.faults.report(SPOOL, str(e))
            self.sched.hold(mid, time.monotonic())
            return
        except StoreError:
            pass  # not active any more (an illegal transition): nothing to record
        self._retire(mid)
        self.counters["failed"] += 1
        if by_ground:
            self.counters["failed_by_ground"] += 1
        self.log.warning("failed", id=mid, reason=reason)

    # --- acknowledgements -------------------------------------------------------------------

    def _drain_acks(self) -> None:
        for _ in range(ACK_DRAIN):
            raw = self.peer.recv_frame()
            if raw is None:
                return
            try:
                frame = self.codec.unpack(raw)
                if frame.type != FrameType.ACK:
                    raise FrameError(f"a {frame.type.name} frame arrived on the return link")
                entries = unpack_acks(frame)
            except PacketizerError as e:
                self.counters["bad_frames"] += 1
                self.log.throttled("badack", 5, "warning", "bad_frame", error=str(e))
                continue
            self.counters["ack_frames"] += 1
            merged: dict[int, list[Any]] = {}
            for e in entries:
                m = merged.setdefault(e.message_id, [e.n, set(), e.status, e.reason])
                if m[0] != e.n:
                    continue
                m[1].update(e.received)
                if _RANK[e.status] > _RANK[m[2]]:
                    m[2], m[3] = e.status, e.reason
            now = time.monotonic()
            for mid, (n, received, status, reason) in merged.items():
                self._apply_ack(mid, n, frozenset(received), status, reason, now)

    def _apply_ack(
        self, mid: int, n: int, received: frozenset[int], status: AckStatus, reason: str | None, now: float
    ) -> None:
        out = self.sched.on_ack(mid, n, received, status, now, reason)
        if out.ignored:
            return
        if out.failed is not None:
            self._fail(mid, f"the ground station cannot decode it: {out.failed}", by_ground=True)
            return
        try:
            if out.complete:
                prog = self.sched.progress(mid)
                self._flush_counters_for(mid)
                self.spool.mark_delivered(mid, time.time())
                self._retire(mid)
                self.counters["delivered"] += 1
                self.log.info("delivered", id=mid, sent=prog["sent"], retransmitted=prog["retransmitted"],
                              probes=prog["probes"])
                return
            if out.held:  # one commit: a held job's frames are all acknowledged by definition
                self.spool.mark_held(mid)
                self.counters["held"] += 1
                self.log.info("held", id=mid, note="the ground has every frame; waiting for it to write the picture")
                return
            if out.released:
                self.spool.mark_in_flight(mid, time.time())
                self.log.warning("released", id=mid, note="the ground lost what it held; sending it again")
            if out.newly_acked:
                self.spool.record_acks(mid, out.newly_acked)
        except StoreUnavailable as e:
            self.faults.report(SPOOL, str(e))
            if out.complete:
                self.sched.hold(mid, now)  # probe again: the next DONE records the delivery
        except StoreError as e:  # a state change the spool refuses (e.g. already there): nothing to redo
            self.log.warning("spool_error", id=mid, error=str(e))

    # --- housekeeping -----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        self._check_spool_file()
        now = time.monotonic()
        for mid, reason in self.sched.over_limit(now):
            self._fail(mid, reason)
        ttl = self.cfg.arq.ttl_s
        for row in self.spool.accepted_before(time.time() - ttl):
            try:
                self.spool.mark_expired(row.id, f"not delivered within arq.ttl_s = {ttl:g} s")
            except StoreError:
                continue
            self._retire(row.id)
            self.counters["expired"] += 1
            self.log.warning("expired", id=row.id, source=row.source_name)
        self._flush_counters()
        self._save_window()
        if self.faults.active(SPOOL):
            try:
                self.spool.probe_write()
            except StoreError as e:
                self.faults.report(SPOOL, str(e))
            else:
                self.faults.clear(SPOOL)
                self.encoder.wake.set()  # jobs left accepted while the spool refused can move now

    def _check_spool_file(self) -> None:
        """Notice a spool file deleted or replaced under the daemon: stop accepting, save what the open file holds."""
        if self.spool_lost is not None:
            return
        problem = self.spool.file_problem()
        if problem is None:
            return
        self.spool_lost = problem
        self.faults.report(SPOOL_FILE, problem)
        rescue = Path(f"{self.cfg.spool}.rescued-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            self.spool.save_copy(rescue)
            saved: str | None = str(rescue)
        except StoreError as e:
            saved = None
            self.log.error("spool_rescue_failed", error=str(e))
        self.log.error("spool_lost", problem=problem, saved_to=saved, undelivered=self.spool.active_count(),
                       note="no new jobs are accepted; jobs already here are still sent; restart the sender "
                            "(move the saved copy to the spool path first to keep its undelivered jobs)")

    def _save_window(self) -> None:
        state = self.codec.replay.state if self.codec.replay is not None else None
        if state != self._saved_window:
            try:
                self.spool.save_peer_window(state)
                self._saved_window = state
            except StoreError as e:
                self.faults.report(SPOOL, str(e))

    def _flush_counters_for(self, mid: int) -> None:
        if mid in self.sched:
            p = self.sched.progress(mid)
            self.spool.flush_counters({mid: (p["sent"], p["retransmitted"])})

    def _flush_counters(self) -> None:
        c = {}
        for mid in self.sched.message_ids():
            p = self.sched.progress(mid)
            if p["sent"]:
                c[mid] = (p["sent"], p["retransmitted"])
        try:
            self.spool.flush_counters(c)
        except StoreError as e:
            self.faults.report(SPOOL, str(e))

    # --- commands ---------------------------------------------------------------------------

    def _accept(self, data: bytes, name: str, options: dict[str, Any], request_id: str | None = None) -> int:
        """Check and spool one job; returns its id (raises SatgwError with a clear reason).

        A ``request_id`` already accepted returns that job's id: no second job.
        StoreUnavailable means "not now" (the spool's disk refuses, or its file is gone).
        """
        self._check_spool_file()
        if self.spool_lost is not None:
            raise StoreUnavailable(f"the sender is not accepting jobs: {self.spool_lost}; restart it")
        if request_id is not None:
            known = self.spool.find_request(request_id)
            if known is not None:  # a retry after a lost reply
                self.counters["repeated_requests"] += 1
                self.log.info("request_repeated", id=known, source=name, request_id=request_id)
                return known
        job = check_job(data, name, options, self.cfg.defaults, self.cfg.limits, job_codecs())
        if self.spool.active_count() >= self.cfg.limits.max_queue:
            raise RequestError(
                f"the spool holds limits.max_queue = {self.cfg.limits.max_queue} undelivered jobs; try later")
        try:
            mid = self.spool.accept(job.image, job.name, priority=job.priority, codec=job.codec, packets=job.packets,
                                    parity=job.parity, request_id=request_id)
        except StoreUnavailable as e:
            self.faults.report(SPOOL, str(e))
            raise StoreUnavailable(f"the sender cannot store the job now ({e}); try again later") from e
        self.faults.clear(SPOOL)
        self.counters["accepted"] += 1
        self.log.info("accepted", id=mid, source=name, bytes=len(data), codec=job.codec, packets=job.packets,
                      priority=job.priority, parity=job.parity)
        self.encoder.wake.set()
        return mid

    def _cmd_send(self, req: dict[str, Any]) -> dict[str, Any]:
        name, data, rid = req.get("name"), req.get("image"), req.get("request_id")
        if not isinstance(name, str) or not isinstance(data, bytes):
            return {"ok": False, "error": "send needs 'name' (text) and 'image' (bytes)"}
        if rid is not None and not (isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID):
            return {"ok": False, "error": f"request_id must be text of 1..{MAX_REQUEST_ID} characters"}
        try:
            mid = self._accept(data, Path(name).name or "image", {k: req[k] for k in OPTIONS if k in req}, rid)
        except SatgwError as e:
            self.counters["refused"] += 1
            self.log.info("refused", source=name, reason=str(e))
            return {"ok": False, "error": str(e)}
        return {"ok": True, "id": mid}

    def _cmd_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        """What a client may send (asked before a big request, which would otherwise be cut off unanswered)."""
        lim = self.cfg.limits
        return {"ok": True, "max_image_bytes": lim.max_image_bytes, "max_pixels": lim.max_pixels,
                "accepting": self.spool_lost is None, "why_not": self.spool_lost}

    def _cmd_status(self, req: dict[str, Any]) -> dict[str, Any]:
        rows = self.spool.recent(STATUS_MESSAGES)
        flushed = self.spool.sent_counters(r.id for r in rows if r.id not in self.sched)
        msgs = []
        for r in rows:
            # An auto job shows the codec it was encoded with beside what it asked for.
            d = {"id": r.id, "state": r.state, "priority": r.priority, "codec": r.codec,
                 "chosen_codec": (r.knobs or {}).get("codec"),
                 "source_name": r.source_name, "n": r.n, "reason": r.reason}
            if r.id in self.sched:
                d.update(self.sched.progress(r.id))
            else:
                sent, retx = flushed.get(r.id, (0, 0))
                d.update({"sent": sent, "retransmitted": retx, "acked": r.n if r.state == "delivered" else 0})
            msgs.append(d)
        return {
            "ok": True,
            "counts": self.spool.counts(),
            "messages": msgs,
            "counters": dict(self.counters),
            "rto_s": self.rto.rto,
            "srtt_s": self.rto.srtt,
            "link": self._link_status(),
            "faults": self.faults.snapshot(),
            "accepting": self.spool_lost is None,
            "encoder": {"alive": self.encoder.is_alive(), "failed_rounds": self.encoder.failures},
        }

