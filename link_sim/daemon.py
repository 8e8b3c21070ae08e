"""The link daemon: carries frames between the sender and the ground station through the simulated link.

``satgw link --config configs/links/geo.yaml`` binds two ROUTER sockets (the
sender side and the ground side) and a REP control socket; the protocol is in
:mod:`gateway.transport.link_peer`.  Frames from the sender side go through the forward
channel to the ground-side peer heard from last; frames from the ground side
(acks) go through the return channel to the sender-side peer heard from last.
A frame with nowhere to go is dropped as ``no_peer``; one the peer cannot take
right now (its queue is full) as ``peer_busy``.

Who may be a side: with CURVE, only clients on the allow-list connect at all.
With the frame key (``--auth-key`` or ``auth_key_file`` in the preset), a
peer takes a side only with a hello signed with that key
(:mod:`gateway.transport.hello`), and only that peer's frames are carried;
everything else is counted in ``refused`` and dropped. Without either, any
peer that can reach the link can take a side, and the daemon says so at start.

Simulation time is the wall time since start times ``time_scale``.  The
daemon is one thread: a zmq Poller for the sockets, the channels' heaps for
due deliveries.

Control requests are msgpack maps with ``cmd``:

* ``stats``: ``{"ok": true, "now", "up", "forward": counters, "return": counters, "peers", "garbage",
  "refused"}`` (``refused``: per side, hellos and frames from peers that did not prove the key)
* ``schedule``: ``{"ok": true, "now", "up", "next_change_in", "time_scale",
  "forward_rate_bps", "return_rate_bps", "frame_size", "return_frame_size"}``
* ``ping``: ``{"ok": true, "pong": true}``

Anything else gets ``{"ok": false, "error": "..."}``.  Logs are JSON objects,
one per line on stderr (:class:`~gateway.transport.eventlog.EventLog`; ``event``: ``start``,
``stats``, ``stop``, ``config_error``, ``start_failed``, ``control_error``).
SIGTERM and SIGINT stop the daemon cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from typing import Any

import zmq

from link_sim.channel import Channel
from link_sim.clock import RealClock
from link_sim.config import Endpoints, LinkConfig, load_link_config
from gateway.errors import ConfigError as GatewayConfigError
from link_sim.errors import ConfigError, LinkSimError
from link_sim.link import FORWARD, RETURN, Link
from link_sim.metrics import LinkMetrics
from link_sim.stages import Packet
from link_sim.trace import TraceWriter
from gateway.transport.control_server import ControlServer
from gateway.transport.curve import CurveKeys
from gateway.transport.eventlog import EventLog
from gateway.transport.hello import SIGNED_SIZE, HelloRefused, HelloVerifier
from gateway.transport.http_listen import check_exposure, parse_listen
from gateway.transport.keyfile import load_frame_key
from gateway.transport.link_peer import FRAME, HELLO
from gateway.transport.metrics_http import MetricsServer, serve_metrics
from gateway.transport.sockets import make_socket

MAX_CONTROL_BYTES = 64 * 1024  # control requests are tiny maps; bigger ones are refused by ZMQ unread
DRAIN_BATCH = 2048  # messages read from one socket before looking at the others again
MAX_POLL_MS = 100  # upper bound on a poll so signals and stats are never late by more
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


class LinkDaemon:
    """The daemon's state and loop. Create, then :meth:`run` until :meth:`stop`."""

    def __init__(self, config: LinkConfig, *, trace_path: str | None = None, log: EventLog | None = None) -> None:
        self.config = config
        self.log = log or EventLog("link")
        self.clock = RealClock(config.time_scale)
        self.trace = TraceWriter(trace_path) if trace_path else None
        self.link = Link(config, self.clock, on_drop=self._trace_drop if self.trace else None)
        self.peers: dict[str, bytes | None] = {"sender": None, "ground": None}
        self.garbage = {"sender": 0, "ground": 0, "control": 0}
        self.refused = {"sender": 0, "ground": 0}
        self.hellos: HelloVerifier | None = None
        if config.auth_key_file:
            try:  # created when missing, like the daemons do: whichever process starts first makes the key
                self.hellos = HelloVerifier(load_frame_key(config.auth_key_file, create=True))
            except GatewayConfigError as e:
                raise ConfigError(f"auth_key_file / --auth-key: {e}") from None
        self._stopping = False
        self.ctx = zmq.Context()
        try:
            self.sender = self._bind_peer_side(config.endpoints.sender_side, config.forward.frame_size)
            self.ground = self._bind_peer_side(config.endpoints.ground_side, config.ret.frame_size)
            self.control = _bind_limited(self.ctx, zmq.REP, config.endpoints.control, MAX_CONTROL_BYTES, config.curve)
        except zmq.ZMQError as e:
            self.ctx.destroy(linger=0)
            raise LinkSimError(
                f"cannot bind the link's sockets ({e}); pick free endpoints with "
                "--sender-side/--ground-side/--control or stop the other link daemon"
            ) from None
        self.bound = Endpoints(
            self.sender.getsockopt_string(zmq.LAST_ENDPOINT),
            self.ground.getsockopt_string(zmq.LAST_ENDPOINT),
            self.control.getsockopt_string(zmq.LAST_ENDPOINT),
        )
        self.control_server = ControlServer(
            self.control,
            {"stats": lambda req: {"ok": True, **self._stats()}, "schedule": lambda req: {"ok": True, **self.link.schedule()}},
            self.log,
            batch=64,
            on_garbage=self._count_control_garbage,
        )
        self.metrics = LinkMetrics(config, self._stats)
        try:
            self.metrics_server: MetricsServer | None = serve_metrics(self.metrics.registry, config.metrics)
        except GatewayConfigError as e:
            self.ctx.destroy(linger=0)
            raise ConfigError(str(e)) from None

    def _count_control_garbage(self) -> None:
        self.garbage["control"] += 1

    def _bind_peer_side(self, endpoint: str, frame_size: int) -> zmq.Socket:
        return _bind_limited(self.ctx, zmq.ROUTER, endpoint, frame_size + 64, self.config.curve)

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        """Serve until :meth:`stop`; returns the exit status."""
        poller = zmq.Poller()
        for sock in (self.sender, self.ground, self.control):
            poller.register(sock, zmq.POLLIN)
        self.log.info(
            "start",
            config=self.config.name,
            sender_side=self.bound.sender_side,
            ground_side=self.bound.ground_side,
            control=self.bound.control,
            time_scale=self.config.time_scale,
            seed=self.config.seed,
            hello_auth=self.hellos is not None,
            curve=self.config.curve is not None,
        )
        if self.hellos is None and self.config.curve is None:
            self.log.warning("open_link", note="neither CURVE nor a frame key: any peer that can reach the link can "
                                               "take a side; give --auth-key (the daemons' frame key) or a curve block")
        if self.metrics_server is not None:
            self.log.info("metrics", url=self.metrics_server.url)
        interval = self.config.stats_interval_s
        next_stats = time.monotonic() + interval
        try:
            while not self._stopping:
                events = dict(poller.poll(self._poll_timeout_ms(next_stats)))
                if self.sender in events:
                    self._drain(self.sender, "sender", FORWARD, self.config.forward.frame_size)
                if self.ground in events:
                    self._drain(self.ground, "ground", RETURN, self.config.ret.frame_size)
                if self.control in events:
                    self.control_server.serve()
                self._deliver()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + interval
                    self.log.info("stats", **self._stats())
                    if self.trace:
                        self.trace.flush()
        finally:
            self.log.info("stop", **self._stats())
            self.close()
        return 0

    def close(self) -> None:
        """Close sockets and the trace file."""
        if self.trace:
            self.trace.close()
            self.trace = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.ctx.destroy(linger=0)

    def _poll_timeout_ms(self, next_stats: float) -> int:
        wall = min(MAX_POLL_MS / 1000, max(0.0, next_stats - time.monotonic()))
        due = self.link.next_due()
        if due is not None:
            wall = min(wall, self.clock.wall_until(due))
        return int(wall * 1000 + 0.999)  # round up: waking early just spins

    def _drain(self, sock: zmq.Socket, side: str, direction: str, frame_size: int) -> None:
        # Plain send/recv with int flags: pyzmq's multipart helpers and flag enums cost more than the link model.
        offer = self.link.channels[direction].offer
        now = self.clock.now
        recv, more = sock.recv, sock.getsockopt
        for _ in range(DRAIN_BATCH):
            try:
                ident = recv(_NOBLOCK)
            except zmq.Again:
                return
            # [identity, kind, *payload]: only two shapes are valid; all else is counted and ignored.
            parts = []
            while more(_RCVMORE):
                part = recv()
                if len(parts) < 3:  # a flood of parts is read and thrown away, never kept
                    parts.append(part)
            if len(parts) == 2 and parts[0] == FRAME and len(parts[1]) == frame_size:
                if self.hellos is None:
                    self.peers[side] = ident
                elif ident != self.peers[side]:
                    self.refused[side] += 1  # not the peer that proved the key
                    continue
                offer(parts[1], now())
            elif parts and parts[0] == HELLO and (len(parts) == 1 or len(parts) == 2 and len(parts[1]) == SIGNED_SIZE):
                self._hello(side, ident, parts[1] if len(parts) == 2 else None)
            else:
                self.garbage[side] += 1

    def _hello(self, side: str, ident: bytes, signed: bytes | None) -> None:
        """A peer says hello on ``side``: it takes the side if it proves the key (or no key is required)."""
        if self.hellos is None:
            self.peers[side] = ident
            return
        try:
            if signed is None:
                raise HelloRefused("an unsigned hello; this link requires the frame key (frame.auth_key_file)")
            self.hellos.verify(side, signed)
        except HelloRefused as e:
            self.refused[side] += 1
            self.log.throttled(f"hello:{side}", 10, "warning", "hello_refused", side=side, reason=str(e))
            return
        if self.peers[side] != ident:
            self.log.info("peer", side=side, note="a peer proved the frame key and takes this side")
        self.peers[side] = ident

    def _deliver(self) -> None:
        t = self.clock.now()
        for direction, channel, sock, side in (
            (FORWARD, self.link.forward, self.ground, "ground"),
            (RETURN, self.link.ret, self.sender, "sender"),
        ):
            if channel.next_due() is None or channel.next_due() > t:  # type: ignore[operator]
                continue
            for d in channel.poll_deliveries(t):
                fate = self._send(sock, side, channel, d.data)
                if self.trace:
                    if fate == "ok":
                        fate = "corrupted" if d.corrupted else "delivered"
                    self.trace.write(direction, d.seq, d.t_in, fate, d.t_out, d.duplicate)

    def _send(self, sock: zmq.Socket, side: str, channel: Channel, data: bytes) -> str:
        peer = self.peers[side]
        if peer is None:
            channel.record_undelivered(len(data), "no_peer")
            return "no_peer"
        try:
            # ROUTER sends all parts or none, and the first part is where EAGAIN/EHOSTUNREACH show up.
            sock.send(peer, _SNDMORE_NOBLOCK)
            sock.send(FRAME, _SNDMORE_NOBLOCK)
            sock.send(data, _NOBLOCK)
            return "ok"
        except zmq.Again:
            channel.record_undelivered(len(data), "peer_busy")
            return "peer_busy"
        except zmq.ZMQError:  # EHOSTUNREACH: the peer disconnected
            channel.record_undelivered(len(data), "no_peer")
            return "no_peer"

    def _stats(self) -> dict:
        return {
            **self.link.stats(),
            "peers": {side: peer is not None for side, peer in self.peers.items()},
            "garbage": dict(self.garbage),
            "refused": dict(self.refused),
        }

    def _trace_drop(self, direction: str, pkt: Packet, cause: str) -> None:
        if self.trace:
            self.trace.write(direction, pkt.seq, pkt.t_in, cause, None, pkt.duplicate)


def _bind_limited(
    ctx: zmq.Context, kind: int, endpoint: str, limit: int, curve: CurveKeys | None
) -> zmq.Socket:
    """A socket bound to ``endpoint`` that cuts off any peer sending a part over ``limit`` bytes.

    The limit means oversized messages are never allocated.
    """
    try:
        sock = make_socket(ctx, kind, endpoint, bind=True, curve=curve, max_msg_size=limit)
    except zmq.ZMQError as e:
        raise zmq.ZMQError(e.errno, f"{e.strerror} ({endpoint})") from None
    if kind == zmq.ROUTER:
        # Unknown identities raise instead of vanishing silently, so no_peer is counted.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="satgw link", description="Run the link simulator daemon.")
    p.add_argument("--config", required=True, help="link preset: a YAML file or a name (clean, geo, leo, harsh)")
    p.add_argument("--time-scale", type=float, help="simulated seconds per wall second (overrides the config)")
    p.add_argument("--seed", type=int, help="random seed of the channel models (overrides the config)")
    p.add_argument("--trace", help="write every frame's fate to this JSONL file")
    p.add_argument("--sender-side", help="endpoint the sender connects to, e.g. tcp://127.0.0.1:5551")
    p.add_argument("--ground-side", help="endpoint the ground station connects to")
    p.add_argument("--control", help="endpoint of the control (stats/schedule) socket")
    p.add_argument("--stats-interval", type=float, help="wall seconds between stats log lines")
    p.add_argument("--auth-key", help="the daemons' frame key file: only peers whose hellos are signed with it "
                                      "may take a side")
    p.add_argument("--metrics-listen", help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9103)")
    return p


def apply_overrides(config: LinkConfig, args: argparse.Namespace) -> LinkConfig:
    """The config with command-line options laid over it (validated like the file)."""
    if args.time_scale is not None and not (0 < args.time_scale <= 1e6):
        raise ConfigError(f"--time-scale: must be greater than 0 and at most 1e6, got {args.time_scale}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed: must be at least 0, got {args.seed}")
    if args.stats_interval is not None and not (0 < args.stats_interval <= 86400):
        raise ConfigError(f"--stats-interval: must be greater than 0 seconds, got {args.stats_interval}")
    for opt, ep in (("--sender-side", args.sender_side), ("--ground-side", args.ground_side), ("--control", args.control)):
        if ep is not None and "://" not in ep:
            raise ConfigError(f"{opt}: must be a ZMQ endpoint like tcp://127.0.0.1:5551, got {ep!r}")
    metrics = config.metrics
    if args.metrics_listen is not None:
        try:
            listen = parse_listen(args.metrics_listen)
            check_exposure(listen, metrics.token_file, "--metrics-listen")
        except ValueError as err:
            raise ConfigError(f"--metrics-listen: {err}") from None
        except GatewayConfigError as err:
            raise ConfigError(f"{err}; set metrics.token_file in the link config") from None
        metrics = replace(metrics, listen=listen)
    e = config.endpoints
    return replace(
        config,
        time_scale=config.time_scale if args.time_scale is None else args.time_scale,
        seed=config.seed if args.seed is None else args.seed,
        stats_interval_s=config.stats_interval_s if args.stats_interval is None else args.stats_interval,
        metrics=metrics,
        endpoints=Endpoints(args.sender_side or e.sender_side, args.ground_side or e.ground_side, args.control or e.control),
        auth_key_file=args.auth_key or config.auth_key_file,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``satgw link``."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = apply_overrides(load_link_config(args.config), args)
        daemon = LinkDaemon(config, trace_path=args.trace)
    except ConfigError as e:
        EventLog("link").error("config_error", error=str(e))
        return 2
    except (LinkSimError, OSError) as e:
        EventLog("link").error("start_failed", error=str(e))
        return 1
    try:
        signal.signal(signal.SIGTERM, daemon.stop)
        signal.signal(signal.SIGINT, daemon.stop)
    except ValueError:
        pass  # not the main thread (embedded in a test): the caller stops it with stop()
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
