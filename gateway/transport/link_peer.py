"""The link's socket protocol, shared by the link daemon and its two peers.

The link daemon binds two ROUTER sockets, one per side (``sender_side`` and
``ground_side``), plus a REP ``control`` socket.  The sender and the ground
station each connect one DEALER socket (:class:`LinkPeer`) to their side.
Every message is multipart ``[kind, *payload]``:

* ``[FRAME, frame_bytes]``: one frame. From the sender side it goes through the
  forward channel to the ground side; from the ground side (ACKs) through the
  return channel to the sender side.
* ``[HELLO]`` or ``[HELLO, signed]``: a heartbeat. Peers send one on connect
  and every ``HEARTBEAT_S`` seconds; the link sends frames to the peer it last
  accepted a hello from on that side (so a restarted peer is picked up at its
  first heartbeat). A peer with the frame key signs its hellos
  (:mod:`gateway.transport.hello`); a link with the key accepts only signed
  ones, and only frames from the peer so accepted.

Control requests and replies are msgpack maps (see
:mod:`gateway.transport.control_server`): ``{"cmd": "stats"}`` returns the
counters of both channels; ``{"cmd": "schedule"}`` returns link availability.
"""

from __future__ import annotations

import zmq

from gateway.transport.curve import CurveKeys
from gateway.transport.hello import sign_hello
from gateway.transport.sockets import make_socket

FRAME = b"F"
HELLO = b"H"
HEARTBEAT_S = 1.0


class LinkPeer:
    """A sender's or ground station's connection to its side of the link daemon.

    Not thread safe: use it from one thread (ZMQ sockets are single-threaded).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        curve: CurveKeys | None = None,
        *,
        hello_key: bytes | None = None,
        side: str = "sender",
    ) -> None:
        self.sock = make_socket(ctx, zmq.DEALER, endpoint, bind=False, curve=curve)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.hello_key, self.side = hello_key, side
        self.send_hello()

    def send_hello(self) -> None:
        """Tell the link this peer is (still) here (signed when the peer has the frame key)."""
        parts = [HELLO] if self.hello_key is None else [HELLO, sign_hello(self.hello_key, self.side)]
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def send_frame(self, frame: bytes) -> bool:
        """Queue one frame for the link; False if the local queue is full (frame not sent)."""
        try:
            self.sock.send_multipart([FRAME, frame], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def recv_frame(self, timeout_ms: int = 0) -> bytes | None:
        """One frame from the link, or None if none arrived within ``timeout_ms``.

        Anything that is not a well-formed ``[FRAME, bytes]`` message is ignored.
        """
        if timeout_ms and not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            parts = self.sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        if len(parts) == 2 and parts[0] == FRAME:
            return parts[1]
        return None

    def close(self) -> None:
        self.sock.close(linger=0)
