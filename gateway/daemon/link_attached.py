"""What the sender and the ground station share: their attachment to the link.

Both daemons bind a control REP socket for ``satgw send/status``, connect a
:class:`~gateway.transport.link_peer.LinkPeer` to their side of the link, and follow
the link's availability and rates, either by asking the link's control socket
for its ``schedule`` (lazy pirate) or, without one, by evaluating a link
preset on their own clock.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq

from gateway.transport.curve import curve_client_keys
from gateway.errors import ConfigError
from gateway.protocol.link_window import LinkWindow
from gateway.transport.lazy_pirate import LazyPirate
from gateway.transport.link_peer import LinkPeer
from gateway.transport.sockets import make_socket


class LinkAttachedDaemon:
    """Base of the two daemons: sockets towards the link and the link's schedule.

    Subclasses call :meth:`_open_link_side` in ``__init__`` and implement
    :meth:`_apply_rates` (what to do when the link's rates or time scale are known).
    """

    cfg: Any
    log: Any

    def _open_link_side(self, role: str, control_max_bytes: int) -> None:
        """Open the control socket and the link peer, and set up schedule tracking."""
        cfg = self.cfg
        self.curve = curve_client_keys(cfg["curve"]["dir"], role)
        self.ctx = zmq.Context()
        try:
            self.control = make_socket(self.ctx, zmq.REP, cfg["control"], bind=True, max_msg_size=control_max_bytes)
            self.peer = LinkPeer(self.ctx, cfg["link"]["endpoint"], self.curve)
        except zmq.ZMQError as e:
            self.ctx.destroy(linger=0)
            raise ConfigError(f"key 'control' / 'link.endpoint': cannot open sockets ({e}); pick free endpoints") from None
        lk = cfg["link"]
        self.link_ctl = (
            LazyPirate(self.ctx, lk["control"], timeout_s=lk["control_timeout_s"], curve=self.curve)
            if lk["control"]
            else None
        )
        self.window = LinkWindow()
        self._preset = None
        self._start_wall = time.monotonic()
        if self.link_ctl is None:
            from link_sim.config import load_link_config

            try:
                self._preset = load_link_config(lk["preset"])
            except Exception as e:
                raise ConfigError(f"key 'link.preset': {e}") from e
            self.window.time_scale = self._preset.time_scale
            self.window.forward_rate_bps = self._preset.forward.rate_bps
            self.window.return_rate_bps = self._preset.ret.rate_bps
            self.window.frame_size = self._preset.frame_size

    def _apply_rates(self) -> None:
        raise NotImplementedError

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        """Reply to one decoded control request (a map with ``cmd``)."""
        raise NotImplementedError

    def _serve_control(self) -> None:
        """Answer the control requests waiting on the REP socket (a bounded batch per call)."""
        for _ in range(16):
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                req = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            except Exception as e:
                reply = {"ok": False, "error": f"request is not valid msgpack ({type(e).__name__})"}
            else:
                if not isinstance(req, dict):
                    reply = {"ok": False, "error": "a request must be a map with 'cmd'"}
                else:
                    try:
                        reply = self._answer(req)
                    except Exception as e:  # a bug in one answer must not kill the daemon
                        self.log.error("control_error", error=f"{type(e).__name__}: {e}")
                        reply = {"ok": False, "error": f"internal error: {type(e).__name__}"}
            self.control.send(msgpack.packb(reply, use_bin_type=True))

    def _poll_schedule(self, now: float) -> float:
        """Ask the link for its schedule (or evaluate the preset); returns when to ask next."""
        period = self.cfg["link"]["schedule_poll_s"]
        if self.link_ctl is None:
            assert self._preset is not None
            link_now = (now - self._start_wall) * self._preset.time_scale
            av = self._preset.availability
            self.window.update_from_model(av.is_up, av.next_change, link_now, now)
            self._apply_rates()
        else:
            if self.link_ctl.timed_out():
                # A lost request or reply must not stall schedule tracking: start over.
                self.window.mark_unknown()
                self.link_ctl.reset()
            if self.link_ctl.pending_since is None:
                self.link_ctl.send({"cmd": "schedule"})
        # Ask again just after the next availability change, so an opening is used at once.
        nxt = now + period
        if self.window.known and self.window.until > now:
            nxt = min(nxt, self.window.until + 0.001)
        return nxt
