"""What the sender and the ground station share: their attachment to the link, and their event loop.

Both daemons bind a control REP socket (``satgw send/status``, answered by
the one :class:`~gateway.transport.control_server.ControlServer`), connect a
:class:`~gateway.transport.link_peer.LinkPeer` to their side of the link, and
follow the link's availability and rates, either by asking the link's
control socket for its ``schedule`` (lazy pirate) or, without one, by
evaluating their own contact plan. :class:`LinkAttachedDaemon` owns all of
that and the loop around it; a daemon adds its frames, its timers and its
commands through a few hooks.

With a frame key, the daemon stamps its frames with an epoch that only grows
and keeps an anti-replay window over its peer's frames (docs/frames.md); both
live in the daemon's database (``link_state``: the spool or the frame store).
An exception escaping one loop turn is logged and the loop goes on: a bug or
a failing resource costs that turn, never the daemon.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import Any, Mapping, Protocol

import zmq

from gateway.daemon.config import DaemonConfig, read_auth_key
from gateway.daemon.faults import FaultBoard
from gateway.errors import ConfigError
from gateway.protocol.link_window import LinkWindow
from gateway.transport.contact_plan import ContactPlan, load_contact_plan
from gateway.transport.control_server import ControlServer, Handler
from gateway.transport.curve import curve_client_keys
from gateway.transport.eventlog import EventLog
from gateway.transport.lazy_pirate import LazyPirate
from gateway.transport.link_peer import HEARTBEAT_S, LinkPeer
from gateway.transport.metrics_http import MetricsServer, serve_metrics
from gateway.transport.sockets import make_socket
from packetizer.frame import FrameCodec
from packetizer.replay import ReplayWindow

LOOP_ERROR_PAUSE_S = 0.05  # after a failed turn, so a persistent fault cannot spin a core


class LinkState(Protocol):
    """Where a daemon keeps its epoch and its peer's replay window (the spool, the frame store)."""

    def next_epoch(self) -> int:
        """This start's epoch (committed)."""
        ...

    def peer_window(self) -> tuple[int, int] | None:
        """The saved (epoch, highest seq) of the peer's frames."""
        ...


class LinkAttachedDaemon:
    """Base of the two daemons: sockets towards the link, the link's schedule, the event loop.

    A subclass implements :meth:`_wait_s` (how long the loop may sleep),
    :meth:`_on_link_frames` (the link peer is readable), :meth:`_turn` (its
    own work once per loop turn), :meth:`_apply_rates` (the link's rates or
    time scale are known) and :meth:`_shutdown`; :meth:`_on_link_up` is
    optional.
    """

    def __init__(
        self,
        role: str,
        cfg: DaemonConfig,
        log: EventLog,
        *,
        commands: Mapping[str, Handler],
        control_max_bytes: int,
        link_state: LinkState | None = None,
    ) -> None:
        link, frame, control = cfg.link, cfg.frame, cfg.control
        self.log, self.link_settings = log, link
        self.faults = FaultBoard(log)
        key = read_auth_key(frame.auth_key_file, frame.create_key)
        if key is not None and link_state is not None:
            self.codec = FrameCodec(frame.size, key, frame.tag_len, epoch=link_state.next_epoch(),
                                    replay=ReplayWindow.restored(link_state.peer_window()))
        else:
            self.codec = FrameCodec(frame.size, key, frame.tag_len)
        self.curve = curve_client_keys(cfg.curve_dir, role)
        self._plan: ContactPlan | None = None
        if link.control is None:
            assert link.contact_plan is not None  # the config guarantees one of the two
            try:
                self._plan = load_contact_plan(link.contact_plan)
            except ConfigError as e:
                raise ConfigError(f"link.contact_plan: {e}") from e
        self.ctx = zmq.Context()
        try:
            self.control = make_socket(self.ctx, zmq.REP, control, bind=True, max_msg_size=control_max_bytes)
            self.peer = LinkPeer(self.ctx, link.endpoint, self.curve, hello_key=key,
                                 side="sender" if role == "sender" else "ground")
        except zmq.ZMQError as e:
            self.ctx.destroy(linger=0)
            raise ConfigError(f"control / link.endpoint: cannot open sockets ({e}); pick free endpoints") from None
        self.control_server = ControlServer(self.control, commands, log)
        self.link_ctl = (
            LazyPirate(self.ctx, link.control, timeout_s=link.control_timeout_s, curve=self.curve)
            if link.control
            else None
        )
        self.window = LinkWindow()
        self._start_wall = time.monotonic()
        if self._plan is not None:
            self.window.time_scale = self._plan.time_scale
            self.window.forward_rate_bps = self._plan.forward_rate_bps
            self.window.return_rate_bps = self._plan.return_rate_bps
        self._poller = zmq.Poller()
        self._poller.register(self.control, zmq.POLLIN)
        self._poller.register(self.peer.sock, zmq.POLLIN)
        self._ctl_registered: zmq.Socket | None = None
        self._next_hello = 0.0
        self._next_schedule = 0.0
        self._stopping = False
        self._metrics_cfg = cfg.metrics
        self.metrics_server: MetricsServer | None = None

    # --- hooks ------------------------------------------------------------------------------

    def _wait_s(self, now: float, link_timer: float) -> float:
        """Seconds the loop may sleep in the poller; ``link_timer`` is when the link side next needs a turn."""
        raise NotImplementedError

    def _on_link_frames(self) -> None:
        """Frames (or ACKs) are waiting on the link peer."""
        raise NotImplementedError

    def _turn(self, now: float) -> None:
        """The daemon's own work, once per loop turn."""
        raise NotImplementedError

    def _apply_rates(self) -> None:
        """The link's rates or time scale are known (again): update pacing."""
        raise NotImplementedError

    def _on_link_up(self) -> None:
        """The link just came up."""

    def _on_link_down(self) -> None:
        """The link just went down as its schedule said (a pass ended; not a lost schedule reply)."""

    def _shutdown(self) -> None:
        """Release the daemon's own resources (threads, databases) at the end of :meth:`run`."""

    def _serve_metrics(self, registry: Any) -> None:
        """Serve ``registry`` at ``metrics.listen`` when configured (call once the daemon is built).

        Binding here, not in :meth:`run`, makes a busy port a start-up error with a clear message.
        """
        try:
            self.metrics_server = serve_metrics(registry, self._metrics_cfg)
        except ConfigError:
            self.ctx.destroy(linger=0)
            raise
        if self.metrics_server is not None:
            self.log.info("metrics", url=self.metrics_server.url)

    # --- the loop ---------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        try:
            while not self._stopping:
                try:
                    self._one_turn()
                except Exception as e:  # a failing resource or a bug costs this turn, not the daemon
                    self._loop_failed(e)
        finally:
            self._shutdown()
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.ctx.destroy(linger=0)
        return 0

    def _one_turn(self) -> None:
        now = time.monotonic()
        link_timer = min(self._next_hello, self._next_schedule)
        events = self._poll(self._wait_s(now, link_timer))
        if self.peer.sock in events:
            self._on_link_frames()
        if self.control in events:
            self.control_server.serve()
        now = time.monotonic()
        self._follow_link(now)
        self._turn(now)

    def _loop_failed(self, e: Exception) -> None:
        """Log an exception that escaped a loop turn (at most every few seconds per kind) and pause briefly."""
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        self.log.throttled(f"loop:{type(e).__name__}", 5, "error", "loop_error", error=f"{type(e).__name__}: {e}",
                           at=f"{where.filename}:{where.lineno}" if where else None)
        time.sleep(LOOP_ERROR_PAUSE_S)

    def _poll(self, wait_s: float) -> dict[zmq.Socket, int]:
        # The lazy pirate replaces its socket after a lost reply: watch the current one.
        if self.link_ctl is not None and self._ctl_registered is not self.link_ctl.sock:
            if self._ctl_registered is not None:
                try:
                    self._poller.unregister(self._ctl_registered)
                except KeyError:
                    pass
            self._poller.register(self.link_ctl.sock, zmq.POLLIN)
            self._ctl_registered = self.link_ctl.sock
        return dict(self._poller.poll(int(math.ceil(max(0.0, wait_s) * 1000))))

    def _follow_link(self, now: float) -> None:
        """Schedule replies, schedule requests and heartbeats."""
        if self.link_ctl is not None:
            sock_before, asked_at = self.link_ctl.sock, self.link_ctl.pending_since
            reply = self.link_ctl.poll_reply()
            if reply is not None:
                self._on_schedule(reply, asked_at or now)
            elif self.link_ctl.sock is not sock_before:
                self.window.mark_unknown()  # the request timed out: the link is gone or stuck
        if now >= self._next_schedule:
            self._next_schedule = self._poll_schedule(now)
        if now >= self._next_hello:
            self.peer.send_hello()
            self._next_hello = now + HEARTBEAT_S

    # --- the link's schedule ----------------------------------------------------------------

    def _on_schedule(self, reply: dict[str, Any], asked_at: float) -> None:
        """Adopt the link's ``schedule`` reply (``asked_at``: wall time the request was sent)."""
        if not reply.get("ok"):
            self.log.throttled("schedule", 10, "warning", "link_schedule_refused", error=reply.get("error"))
            return
        was_up = self.window.up and self.window.known
        self.window.update_from_schedule(reply, asked_at)
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
            self.log.info("link_" + ("up" if self.window.up else "down"),
                          until_s=round(self.window.until - asked_at, 3))
            if self.window.up:
                self._on_link_up()
            elif was_up:
                self._on_link_down()

    def _poll_schedule(self, now: float) -> float:
        """Ask the link for its schedule (or evaluate the contact plan); returns when to ask next."""
        if self._plan is not None:
            plan = self._plan
            link_now = (now - self._start_wall) * plan.time_scale
            was_up = self.window.up and self.window.known
            self.window.update_from_model(plan.availability.is_up, plan.availability.next_change, link_now, now)
            self._apply_rates()
            if self.window.up and not was_up:
                self._on_link_up()
            elif was_up and not self.window.up:
                self._on_link_down()
        else:
            assert self.link_ctl is not None
            if self.link_ctl.timed_out():
                # A lost request or reply must not stall schedule tracking: start over.
                self.window.mark_unknown()
                self.link_ctl.reset()
            if self.link_ctl.pending_since is None:
                self.link_ctl.send({"cmd": "schedule"})
        # Ask again just after the next availability change, so an opening is used at once.
        nxt = now + self.link_settings.schedule_poll_s
        if self.window.known and self.window.until > now:
            nxt = min(nxt, self.window.until + 0.001)
        return nxt

    def _link_status(self) -> dict[str, Any]:
        """What ``status`` replies say about the link."""
        return {"known": self.window.known, "up": self.window.up, "time_scale": self.window.time_scale,
                "forward_rate_bps": self.window.forward_rate_bps}
