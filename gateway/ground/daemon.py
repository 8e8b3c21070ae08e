"""The ground-station daemon (``satgw receiver``): frame store, ACKs, reassembly, decode.

One event-loop thread owns the sockets: the DEALER to the link (frames in,
ACK frames out), a REP control socket for ``satgw status`` and a lazy-pirate
REQ to the link's control socket (return rate, time scale, availability).
Order of operations for every batch of frames: verify (CRC, HMAC) -> commit to
the frame store -> only then acknowledge. ACK frames are paced at the return
link's rate; between two ACK frames the set of messages to acknowledge grows,
so ACKs batch by themselves under load and go out at once when idle.
Decoding runs in a :class:`gateway.ground.decode_worker.DecodeWorker`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, deque
from typing import Any

import zmq

from gateway.daemon.config import DaemonConfig, load_receiver_config, read_auth_key
from gateway.ground.decode_worker import DecodeJob, DecodeWorker
from gateway.store.framestore import FrameStore
from gateway.daemon.startup import add_link_options, link_overrides, run_daemon
from gateway.daemon.link_attached import LinkAttachedDaemon
from gateway.transport.eventlog import EventLog
from gateway.protocol.pacer import Pacer
from gateway.transport.link_peer import HEARTBEAT_S
from packetizer.ack import AckEntry, pack_acks
from packetizer.errors import PacketizerError
from packetizer.frame import FrameCodec
from packetizer.segment import assemble

MAX_ACK_QUEUE = 64  # ACK frames waiting for the return link; older ones are superseded by newer state


class ReceiverDaemon(LinkAttachedDaemon):
    """The ground station's state and event loop. Create, then :meth:`run` until :meth:`stop`."""

    def __init__(self, cfg: DaemonConfig, log: EventLog) -> None:
        self.cfg, self.log = cfg, log
        fr = cfg["frame"]
        self.codec = FrameCodec(fr["size"], read_auth_key(fr["auth_key_file"]), fr["tag_len"])
        lim = cfg["limits"]
        self.store = FrameStore(
            cfg["store"],
            synchronous=cfg["store_synchronous"],
            max_pending=lim["max_pending_messages"],
            max_frames_per_message=lim["max_frames_per_message"],
        )
        self._open_link_side("receiver", 65536)
        self.ack_pacer = Pacer(1.0, burst=2)
        self.ack_queue: deque[bytes] = deque()
        self.to_ack: set[int] = set()
        self.waiting_meta: dict[int, float] = {}  # message id -> wall time it stops waiting for META
        self.decoding: set[int] = set()
        self.worker = DecodeWorker(cfg["decode"]["worker"], cfg["decode"]["timeout_s"])
        self.counters: Counter = Counter()
        self._stopping = False

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stopping = True

    def _scale(self) -> float:
        return self.window.time_scale or 1.0

    # --- loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        for mid in self.store.with_state("assembled"):
            self._submit_decode(mid)
        for mid in self.store.with_state("receiving"):
            st = self.store.ack_state(mid)
            if st is not None and len(st.received) >= self.store.info(mid)["k"]:
                self._try_assemble(mid, time.monotonic())
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.peer.sock, zmq.POLLIN)
        ctl_sock: zmq.Socket | None = None
        self.log.info(
            "start", store=str(self.cfg["store"]), outbox=self.cfg["outbox"], link=self.cfg["link"]["endpoint"],
            hmac=self.codec.auth_key is not None, curve=self.curve is not None, counts=self.store.counts(),
        )
        next_hello = next_sched = next_periodic = 0.0
        try:
            while not self._stopping:
                if self.link_ctl is not None and ctl_sock is not self.link_ctl.sock:
                    if ctl_sock is not None:
                        try:
                            poller.unregister(ctl_sock)
                        except KeyError:
                            pass
                    ctl_sock = self.link_ctl.sock
                    poller.register(ctl_sock, zmq.POLLIN)
                now = time.monotonic()
                wait = max(0.0, min(next_hello, next_sched, next_periodic) - now)
                if self.ack_queue or self.to_ack:
                    wait = min(wait, self.ack_pacer.wait(now))
                if self.decoding or self.waiting_meta:
                    wait = min(wait, 0.02)
                events = dict(poller.poll(int(math.ceil(min(wait, 0.1) * 1000))))
                if self.peer.sock in events:
                    self._receive()
                if self.control in events:
                    self._serve_control()
                now = time.monotonic()
                if self.link_ctl is not None:
                    before, asked_at = self.link_ctl.sock, self.link_ctl.pending_since
                    reply = self.link_ctl.poll_reply()
                    if reply is not None and reply.get("ok"):
                        self.window.update_from_schedule(reply, asked_at or now)
                        self._apply_rates()
                    elif self.link_ctl.sock is not before:
                        self.window.mark_unknown()
                if now >= next_sched:
                    next_sched = self._poll_schedule(now)
                if now >= next_hello:
                    self.peer.send_hello()
                    next_hello = now + HEARTBEAT_S
                if now >= next_periodic:
                    ack = self.cfg["ack"]
                    since = time.time() - ack["active_s"] / self._scale()
                    self.to_ack.update(self.store.active_since(since))
                    next_periodic = now + ack["interval_s"] / self._scale()
                self._check_meta_waits(now)
                self._collect_decodes()
                self._send_acks()
        finally:
            self.log.info("stop", **self.counters)
            self.worker.close()
            self.ctx.destroy(linger=0)
            self.store.close()
        return 0

    def _apply_rates(self) -> None:
        rate = self.window.return_rate_bps
        if rate:
            self.ack_pacer.set_interval(self.codec.frame_size * 8.0 / rate / self._scale())

    # --- frames in --------------------------------------------------------------------------

    def _receive(self) -> None:
        batch = []
        for _ in range(self.cfg["limits"]["max_batch_frames"]):
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
            deadline = self.waiting_meta.setdefault(mid, now + self.cfg["ack"]["meta_grace_s"] / self._scale())
            if now < deadline:
                return
        self.waiting_meta.pop(mid, None)
        try:
            data = assemble(self.store.frames_of(mid))
        except PacketizerError as e:
            self._fail(mid, f"frames do not assemble: {e}")
            return
        if data is None:
            return
        self.store.mark_assembled(mid, data, time.time())
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
        if attempts > self.cfg["decode"]["max_attempts"]:
            self._fail(mid, f"decoder crashed or timed out {attempts - 1} times on this bitstream")
            return
        bitstream = self.store.bitstream(mid)
        if bitstream is None:
            self._fail(mid, "assembled message has no bitstream in the store")
            return
        info = self.store.info(mid)
        info["frame_size"] = self.codec.frame_size
        info.pop("result", None)
        self.decoding.add(mid)
        self.worker.submit(DecodeJob(mid, bitstream, self.cfg["outbox"], info, self.cfg["bundle"]))

    def _collect_decodes(self) -> None:
        for mid, status, value in self.worker.poll():
            self.decoding.discard(mid)
            if status == "ok":
                self.store.mark_done(mid, {"bpp": value.get("bpp"), "codec": value.get("codec")}, time.time())
                self.counters["decoded"] += 1
                self.log.info("decoded", id=mid, source=value.get("source_name"), codec=value.get("codec"),
                              bpp=value.get("bpp"), decode_s=value["timings"]["decode_s"])
            elif status == "error":
                self._fail(mid, f"decode failed: {value}")
            else:
                self.log.error("decoder_crashed", id=mid, reason=value)
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

    # --- control ----------------------------------------------------------------------------

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {
                "ok": True,
                "counts": self.store.counts(),
                "counters": dict(self.counters),
                "messages": self.store.recent(100),
                "decoding": len(self.decoding),
                "link": {"known": self.window.known, "up": self.window.up},
            }
        if cmd == "ping":
            return {"ok": True, "pong": True}
        return {"ok": False, "error": f"unknown cmd {str(cmd)[:40]!r}; commands are status, ping"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satgw receiver", description="Run the ground-station daemon.")
    p.add_argument("--config", help="daemon config YAML (configs/daemons/receiver.yaml)")
    p.add_argument("--store", help="SQLite frame store file")
    p.add_argument("--outbox", help="folder for decoded PNG + JSON")
    p.add_argument("--control", help="endpoint to bind for satgw status")
    p.add_argument("--decode-worker", choices=("process", "thread"), help="where decoding runs")
    add_link_options(p, "ground-side")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw receiver``."""
    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    own = {"store": a.store, "outbox": a.outbox, "decode.worker": a.decode_worker}
    return run_daemon("receiver", load_receiver_config, a.config, {**own, **link_overrides(a)}, ReceiverDaemon)


if __name__ == "__main__":
    sys.exit(main())
