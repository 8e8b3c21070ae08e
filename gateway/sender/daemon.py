"""The sender daemon: spool, encoder, transmit scheduler (``satgw sender``).

One event-loop thread owns every socket (ZeroMQ sockets are single-threaded):
the control REP socket (``satgw send`` / ``satgw status``), the DEALER to the
link (frames out, ACKs in) and a lazy-pirate REQ to the link's control socket
(availability, rate, time scale). A second thread runs the rate controller and
packetizer on accepted jobs, so a slow encode never stalls pacing or ACKs.
Both threads talk only through the spool (SQLite, durable) and a queue of ids.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from gateway.daemon.config import DaemonConfig, load_sender_config, read_auth_key
from gateway.errors import ConfigError, SatgwError, SpoolError
from gateway.daemon.startup import add_link_options, link_overrides, run_daemon
from gateway.daemon.link_attached import LinkAttachedDaemon
from gateway.transport.eventlog import EventLog
from gateway.protocol.pacer import Pacer
from gateway.protocol.rto import RtoEstimator
from gateway.protocol.selective_repeat import META_INDEX, TransmitScheduler
from gateway.store.spool import Spool
from gateway.transport.link_peer import HEARTBEAT_S
from packetizer.ack import unpack_acks
from packetizer.errors import FrameError, PacketizerError
from packetizer.frame import Frame, FrameCodec, FrameType

MAX_META_NAME = 120  # characters of the source file name carried in the META frame
ACK_DRAIN = 256  # ACK frames read per loop turn before looking at the other sockets


class Encoder(threading.Thread):
    """Encodes accepted jobs (rate control + packetizer) and hands their ids to the event loop."""

    def __init__(self, cfg: DaemonConfig, codec: FrameCodec, log: EventLog, done: "queue.Queue[int]") -> None:
        super().__init__(name="encoder", daemon=True)
        self.cfg, self.codec, self.log, self.done = cfg, codec, log, done
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        spool = Spool(self.cfg["spool"], self.cfg["spool_synchronous"])
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

    def _encode(self, spool: Spool, row: Any) -> None:
        from gateway.codec.image_io import read_rgb
        from gateway.codec.registry import get_codec
        from gateway.ratecontrol import Budget, fit
        from packetizer.segment import split_message

        t0 = time.perf_counter()
        try:
            arr = read_rgb(spool.image(row.id), self.cfg["limits"]["max_pixels"])
            budget = Budget.for_frames(row.packets, self.codec, row.parity)
            result = fit(get_codec(row.codec, self.cfg["bundle"]), arr, budget, label=row.source_name)
            frames = split_message(row.id, result.bitstream, self.codec, parity=row.parity)
            meta = msgpack.packb(
                {"name": row.source_name[:MAX_META_NAME], "size": row.image_size, "codec": row.codec},
                use_bin_type=True,
            )
            if len(meta) > self.codec.payload_capacity:
                meta = msgpack.packb({"name": "", "size": row.image_size, "codec": row.codec}, use_bin_type=True)
            spool.mark_encoded(
                row.id,
                result.bitstream,
                result.as_dict(),
                [(f.index, int(f.type), f.last_len, f.payload) for f in frames],
                meta,
                frames[0].k,
                frames[0].n,
            )
        except (SatgwError, PacketizerError, OSError, ValueError) as e:
            # Budget errors, undecodable images, bad codec names: the job fails, the daemon goes on.
            reason = f"{type(e).__name__}: {e}"
            spool.mark_failed(row.id, reason)
            self.log.warning("encode_failed", id=row.id, source=row.source_name, reason=reason)
            return
        except Exception as e:  # a codec bug must fail one job, not the daemon
            reason = f"internal error while encoding: {type(e).__name__}: {e}"
            spool.mark_failed(row.id, reason)
            self.log.error("encode_failed", id=row.id, source=row.source_name, reason=reason)
            return
        self.log.info(
            "encoded",
            id=row.id,
            source=row.source_name,
            codec=row.codec,
            bytes=result.bytes,
            k=frames[0].k,
            n=frames[0].n,
            seconds=round(time.perf_counter() - t0, 3),
        )
        self.done.put(row.id)


class SenderDaemon(LinkAttachedDaemon):
    """The sender's state and event loop. Create, then :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: DaemonConfig, log: EventLog) -> None:
        self.cfg, self.log = cfg, log
        fr = cfg["frame"]
        self.codec = FrameCodec(fr["size"], read_auth_key(fr["auth_key_file"]), fr["tag_len"])
        self.spool = Spool(cfg["spool"], cfg["spool_synchronous"])
        lim = cfg["limits"]
        # The biggest legal request is one image plus a little msgpack framing.
        self._open_link_side("sender", lim["max_image_bytes"] + 65536)
        arq = cfg["arq"]
        self.rto = RtoEstimator(arq["initial_rto_s"], arq["min_rto_s"], arq["max_rto_s"])
        self._rto_scale: tuple = ()  # (time scale, rates) the RTO bounds were last derived from
        self.sched = TransmitScheduler(
            self.rto, reorder_frames=arq["reorder_frames"], max_transmissions=arq["max_transmissions"]
        )
        self.pacer = Pacer(1.0, burst=arq["burst_frames"])
        self.encoded: queue.Queue[int] = queue.Queue()
        self.encoder = Encoder(cfg, self.codec, log, self.encoded)
        self.counters = {
            "frames_sent": 0,
            "retransmissions": 0,
            "meta_sent": 0,
            "ack_frames": 0,
            "bad_frames": 0,
            "link_refused": 0,
            "delivered": 0,
            "failed": 0,
            "expired": 0,
            "accepted": 0,
        }
        self._frames_cache: dict[int, tuple[int, int, dict[int, tuple[int, int, bytes]], bytes | None]] = {}
        self._in_flight: set[int] = set()
        self._stopping = False
        self._inbox_seen: dict[str, tuple[int, int]] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stopping = True

    def _load_spool(self) -> None:
        """Queue every encoded or in-flight message (restart: resume where the spool says)."""
        for row in self.spool.list(["encoded", "in_flight"], limit=10_000_000):
            self._queue_message(row.id)

    def _queue_message(self, mid: int) -> None:
        try:
            row = self.spool.get(mid)
        except SpoolError:
            return
        if row.state not in ("encoded", "in_flight") or row.n is None:
            return
        frames = self.spool.frames(mid)
        meta = self.spool.meta(mid)
        self._frames_cache[mid] = (
            row.k,
            row.n,
            {f.index: (f.type, f.last_len, f.payload) for f in frames},
            meta,
        )
        if row.state == "in_flight":
            self._in_flight.add(mid)
        self.sched.add(
            mid,
            priority=row.priority,
            created=row.accepted_at,
            n=row.n,
            acked=[f.index for f in frames if f.acked],
            has_meta=meta is not None,
            k=row.k,
        )

    def _retire(self, mid: int) -> None:
        self.sched.remove(mid)
        self._frames_cache.pop(mid, None)
        self._in_flight.discard(mid)

    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        self._load_spool()
        self.encoder.start()
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.peer.sock, zmq.POLLIN)
        self.log.info(
            "start",
            spool=str(self.cfg["spool"]),
            control=self.cfg["control"],
            link=self.cfg["link"]["endpoint"],
            queued=len(self.sched),
            hmac=self.codec.auth_key is not None,
            curve=self.curve is not None,
        )
        next_hello = 0.0
        next_sched_poll = 0.0
        next_housekeeping = time.monotonic() + 1.0
        next_inbox = 0.0
        ctl_registered: zmq.Socket | None = None
        try:
            while not self._stopping:
                now = time.monotonic()
                if self.link_ctl is not None and ctl_registered is not self.link_ctl.sock:
                    if ctl_registered is not None:
                        try:
                            poller.unregister(ctl_registered)
                        except KeyError:
                            pass
                    poller.register(self.link_ctl.sock, zmq.POLLIN)
                    ctl_registered = self.link_ctl.sock
                timeout = self._poll_timeout(now, min(next_hello, next_sched_poll, next_housekeeping))
                events = dict(poller.poll(timeout))
                if self.control in events:
                    self._serve_control()
                if self.peer.sock in events:
                    self._drain_acks()
                now = time.monotonic()
                if self.link_ctl is not None:
                    sock_before, asked_at = self.link_ctl.sock, self.link_ctl.pending_since
                    reply = self.link_ctl.poll_reply()
                    if reply is not None:
                        self._on_schedule(reply, asked_at or time.monotonic())
                    elif self.link_ctl.sock is not sock_before:
                        self.window.mark_unknown()  # the request timed out: the link is gone or stuck
                if now >= next_sched_poll:
                    next_sched_poll = self._poll_schedule(now)
                if now >= next_hello:
                    self.peer.send_hello()
                    next_hello = now + HEARTBEAT_S
                while True:
                    try:
                        self._queue_message(self.encoded.get_nowait())
                    except queue.Empty:
                        break
                self._transmit()
                if now >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = now + 1.0
                if self.cfg["inbox"] and now >= next_inbox:
                    self._scan_inbox()
                    next_inbox = now + self.cfg["inbox_poll_s"]
        finally:
            self.log.info("stop", **self.counters)
            self.encoder.stopping.set()
            self.encoder.wake.set()
            self._flush_counters()
            self.encoder.join(timeout=5.0)
            self.ctx.destroy(linger=0)
            self.spool.close()
        return 0

    # --- link schedule ----------------------------------------------------------------------

    def _on_schedule(self, reply: dict[str, Any], now: float) -> None:
        if not reply.get("ok"):
            self.log.throttled("schedule", 10, "warning", "link_schedule_refused", error=reply.get("error"))
            return
        was_up = self.window.up and self.window.known
        self.window.update_from_schedule(reply, now)
        fs = self.window.frame_size
        if fs is not None and fs != self.codec.frame_size:
            self.log.throttled(
                "fs", 30, "error", "frame_size_mismatch", link=fs, ours=self.codec.frame_size,
                hint="set frame.size to the link's frame_size",
            )
            self.window.mark_unknown()
            return
        self._apply_rates()
        if self.window.up != was_up:
            self.log.info("link_" + ("up" if self.window.up else "down"), until_s=round(self.window.until - now, 3))
            if self.window.up:
                self.pacer.reset()

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
            arq = self.cfg["arq"]
            fwd = self.window.frame_interval(self.codec.frame_size) or 0.0
            ret = self.window.frame_interval(self.codec.frame_size, self.window.return_rate_bps) or 0.0
            physics = fwd + ret
            self.rto.set_bounds(max(arq["min_rto_s"] / ts, 1.5 * physics), arq["max_rto_s"] / ts)
            if self.rto.samples == 0:
                first = max(arq["initial_rto_s"] / ts, 3.0 * physics)
                self.rto.rto = min(max(first, self.rto.min), self.rto.max)
            self._rto_scale = key

    # --- transmit ---------------------------------------------------------------------------

    def _poll_timeout(self, now: float, next_timer: float) -> int:
        t = max(0.0, next_timer - now)
        if self.window.known and self.window.up and len(self.sched):
            t = min(t, self.pacer.wait(now))
            dl = self.sched.next_deadline(now)
            if dl is not None:
                t = min(t, max(0.0, dl - now))
        t = min(t, 0.05)
        return int(math.ceil(t * 1000))

    def _transmit(self) -> None:
        frame_wall = self.pacer.interval
        # Bounded per turn so control requests and ACKs are never starved.
        for _ in range(64):
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
            self.sched.sent(pick.message_id, pick.index, now)
            self.pacer.sent(now)
            self.counters["frames_sent"] += 1
            if pick.index == META_INDEX:
                self.counters["meta_sent"] += 1
            if pick.retransmission:
                self.counters["retransmissions"] += 1
            if pick.message_id not in self._in_flight:
                self._in_flight.add(pick.message_id)
                try:
                    self.spool.mark_in_flight(pick.message_id, time.time())
                except SpoolError:
                    pass  # already in flight after a restart

    def _pack(self, mid: int, index: int) -> bytes | None:
        entry = self._frames_cache.get(mid)
        if entry is None:
            self.sched.remove(mid)
            return None
        k, n, frames, meta = entry
        try:
            if index == META_INDEX:
                return self.codec.pack(Frame(FrameType.META, mid, 0, k, n, meta or b""))
            t, last_len, payload = frames[index]
            return self.codec.pack(Frame(FrameType(t), mid, index, k, n, payload, last_len))
        except (PacketizerError, KeyError) as e:
            self._fail(mid, f"stored frame {index} cannot be packed ({e}); was frame.size or tag_len changed?")
            return None

    def _fail(self, mid: int, reason: str) -> None:
        try:
            self.spool.mark_failed(mid, reason)
        except SpoolError:
            pass
        self._retire(mid)
        self.counters["failed"] += 1
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
                m = merged.setdefault(e.message_id, [e.n, set(), False])
                if m[0] != e.n:
                    continue
                m[1].update(e.received)
                m[2] = m[2] or e.complete
            now = time.monotonic()
            for mid, (n, received, complete) in merged.items():
                self._apply_ack(mid, n, frozenset(received), complete, now)

    def _apply_ack(self, mid: int, n: int, received: frozenset[int], complete: bool, now: float) -> None:
        out = self.sched.on_ack(mid, n, received, complete, now)
        if out.ignored:
            return
        try:
            if out.newly_acked and not out.complete:
                self.spool.record_acks(mid, out.newly_acked)
            if out.complete:
                prog = self.sched.progress(mid)
                self._flush_counters_for(mid)
                self.spool.mark_delivered(mid, time.time())
                self._retire(mid)
                self.counters["delivered"] += 1
                self.log.info("delivered", id=mid, sent=prog["sent"], retransmitted=prog["retransmitted"])
        except SpoolError as e:
            self.log.error("spool_error", id=mid, error=str(e))

    # --- housekeeping -----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for mid, reason in self.sched.over_limit(now):
            self._fail(mid, reason)
        ttl = self.cfg["arq"]["ttl_s"]
        cutoff = time.time() - ttl
        for row in self.spool.list(["accepted", "encoded", "in_flight"], limit=100_000):
            if row.accepted_at < cutoff:
                try:
                    self.spool.mark_expired(row.id, f"not delivered within arq.ttl_s = {ttl:g} s")
                except SpoolError:
                    continue
                self._retire(row.id)
                self.counters["expired"] += 1
                self.log.warning("expired", id=row.id, source=row.source_name)
        self._flush_counters()

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
        except SpoolError as e:
            self.log.error("spool_error", error=str(e))

    # --- acceptance -------------------------------------------------------------------------

    def _accept(self, data: bytes, name: str, opts: dict[str, Any]) -> int:
        """Validate and spool one job; returns its id (raises SatgwError with a clear reason)."""
        from gateway.codec.registry import available_codecs

        lim, d = self.cfg["limits"], self.cfg["defaults"]
        if not data:
            raise SpoolError("the image is empty")
        if len(data) > lim["max_image_bytes"]:
            raise SpoolError(f"the image is {len(data)} bytes, above limits.max_image_bytes = {lim['max_image_bytes']}")
        codec = opts.get("codec") or d["codec"]
        if codec not in available_codecs():
            raise ConfigError(f"unknown codec {codec!r}; use one of {', '.join(available_codecs())}")
        packets = opts.get("packets", d["packets"])
        priority = opts.get("priority", d["priority"])
        parity = opts.get("parity", d["parity"])
        for key, v, lo, hi in (("packets", packets, 1, 65535), ("priority", priority, -1000, 1000), ("parity", parity, 0, 255)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"{key} = {v!r} is invalid: use an integer in {lo}..{hi}")
        if parity >= packets:
            raise ConfigError(f"parity = {parity} leaves no data frames in a budget of {packets} packets")
        if self.spool.active_count() >= lim["max_queue"]:
            raise SpoolError(f"the spool holds limits.max_queue = {lim['max_queue']} undelivered jobs; try later")
        mid = self.spool.accept(data, name, priority=priority, codec=codec, packets=packets, parity=parity)
        self.counters["accepted"] += 1
        self.log.info("accepted", id=mid, source=name, bytes=len(data), codec=codec, packets=packets,
                      priority=priority, parity=parity)
        self.encoder.wake.set()
        return mid

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "send":
            name, data = req.get("name"), req.get("image")
            if not isinstance(name, str) or not isinstance(data, bytes):
                return {"ok": False, "error": "send needs 'name' (text) and 'image' (bytes)"}
            opts = {k: req[k] for k in ("codec", "packets", "priority", "parity") if k in req}
            try:
                return {"ok": True, "id": self._accept(data, Path(name).name or "image", opts)}
            except SatgwError as e:
                return {"ok": False, "error": str(e)}
        if cmd == "status":
            return self._status()
        if cmd == "ping":
            return {"ok": True, "pong": True}
        return {"ok": False, "error": f"unknown cmd {str(cmd)[:40]!r}; commands are send, status, ping"}

    def _status(self) -> dict[str, Any]:
        rows = self.spool.list(None, limit=100_000)[-200:]
        msgs = []
        for r in rows:
            d = {
                "id": r.id, "state": r.state, "priority": r.priority, "codec": r.codec,
                "source_name": r.source_name, "n": r.n, "reason": r.reason,
            }
            if r.id in self.sched:
                d.update(self.sched.progress(r.id))
            else:
                sent, retx = self.spool.sent_counters(r.id)
                d.update({"sent": sent, "retransmitted": retx, "acked": r.n if r.state == "delivered" else 0})
            msgs.append(d)
        return {
            "ok": True,
            "counts": self.spool.counts(),
            "messages": msgs,
            "counters": dict(self.counters),
            "rto_s": self.rto.rto,
            "srtt_s": self.rto.srtt,
            "link": {"known": self.window.known, "up": self.window.up, "time_scale": self.window.time_scale,
                     "forward_rate_bps": self.window.forward_rate_bps},
        }

    # --- inbox ------------------------------------------------------------------------------

    def _scan_inbox(self) -> None:
        inbox = Path(self.cfg["inbox"])
        try:
            inbox.mkdir(parents=True, exist_ok=True)
            entries = [p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")]
        except OSError as e:
            self.log.throttled("inbox", 60, "error", "inbox_error", error=str(e))
            return
        seen = {}
        for p in sorted(entries)[:256]:
            if p.suffix in (".tmp", ".part"):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            seen[p.name] = sig
            if self._inbox_seen.get(p.name) != sig:
                continue  # still being written, or new: take it when it has been stable for one poll
            try:
                data = p.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if self.spool.find_by_source(p.name, digest) is None:
                    self._accept(data, p.name, {})
                p.unlink()
            except (SatgwError, OSError) as e:
                self.log.warning("inbox_rejected", file=p.name, reason=str(e))
                rejected = inbox / ".rejected"
                try:
                    rejected.mkdir(exist_ok=True)
                    p.replace(rejected / p.name)
                except OSError:
                    pass
        self._inbox_seen = seen


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satgw sender", description="Run the sender daemon.")
    p.add_argument("--config", help="daemon config YAML (configs/daemons/sender.yaml)")
    p.add_argument("--spool", help="SQLite spool file")
    p.add_argument("--inbox", help="folder polled for new images")
    p.add_argument("--control", help="endpoint to bind for satgw send/status")
    add_link_options(p, "sender-side")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw sender``."""
    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    own = {"spool": a.spool, "inbox": a.inbox}
    return run_daemon("sender", load_sender_config, a.config, {**own, **link_overrides(a)}, SenderDaemon)


if __name__ == "__main__":
    sys.exit(main())
