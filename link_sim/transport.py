"""The link's socket protocol, shared by the link daemon and its two peers.

The link daemon binds two ROUTER sockets, one per side (``sender_side`` and
``ground_side``), plus a REP ``control`` socket.  The sender and the ground
station each connect one DEALER socket to their side.  Every message is
multipart ``[kind, *payload]``:

* ``[FRAME, frame_bytes]``: one frame. From the sender side it goes through the
  forward channel to the ground side; from the ground side (ACKs) through the
  return channel to the sender side.
* ``[HELLO]``: a heartbeat. Peers send one on connect and every
  ``HEARTBEAT_S`` seconds; the link sends frames to the peer it heard from last
  on that side (so a restarted peer is picked up at its first heartbeat).

Control requests and replies are msgpack maps: ``{"cmd": "stats"}`` returns
the counters of both channels; ``{"cmd": "schedule"}`` returns link
availability (see ``link_sim.daemon``).

CURVE: when a :class:`CurveKeys` is given, servers (the link's binds) use
their secret key and only accept clients whose public key is in
``allowed_clients`` (ZAP authentication); clients need the server's public key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq

FRAME = b"F"
HELLO = b"H"
HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class CurveKeys:
    """CURVE key material of one endpoint (Z85 text keys as bytes).

    ``server_public`` is set on clients (the key of the server they connect to);
    ``allowed_clients`` on servers (the client public keys they accept; empty
    means any client that knows the server key).
    """

    public: bytes
    secret: bytes
    server_public: bytes | None = None
    allowed_clients: tuple[bytes, ...] = field(default_factory=tuple)


def generate_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` into ``directory``.

    Returns (public_path, secret_path). The secret file is created mode 0600.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = d / f"{name}.key", d / f"{name}.key_secret"
    pub_path.write_bytes(public + b"\n")
    fd = os.open(sec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return pub_path, sec_path


def load_key(path: str | os.PathLike) -> bytes:
    """Read one Z85 key (40 characters) from a key file written by :func:`generate_keypair`."""
    raw = Path(path).read_bytes().strip()
    if len(raw) != 40:
        raise ValueError(f"{path}: expected a 40-character Z85 CURVE key, found {len(raw)} bytes")
    return raw


_auth_threads: dict[int, object] = {}


def _start_authenticator(ctx: zmq.Context, allowed: tuple[bytes, ...]) -> None:
    """Start one ZAP authenticator per context that accepts only ``allowed`` keys."""
    if id(ctx) in _auth_threads:
        return
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    if allowed:
        auth.configure_curve_callback(domain="*", credentials_provider=_KeySet(allowed))
    else:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    _auth_threads[id(ctx)] = auth


class _KeySet:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        # pyzmq hands the callback Z85 text keys, so compare in that form.
        self._keys = {k if len(k) == 40 else zmq.utils.z85.encode(k) for k in keys}

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys


def make_socket(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    curve: CurveKeys | None = None,
    hwm: int = 10_000,
    max_msg_size: int | None = None,
) -> zmq.Socket:
    """Create, secure and bind/connect one socket.

    Sockets never block a daemon on close (LINGER 0) and queue at most ``hwm``
    messages, so a dead peer costs bounded memory.  ``max_msg_size`` cuts off a
    peer that sends a larger message part (set before bind: ZMQ copies options
    into the listener at bind time).
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_msg_size is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    if curve is not None:
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        if bind:
            _start_authenticator(ctx, curve.allowed_clients)
            sock.curve_server = True
        else:
            if curve.server_public is None:
                raise ValueError(f"CURVE client for {endpoint} needs the server's public key")
            sock.curve_serverkey = curve.server_public
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock


class LinkPeer:
    """A sender's or ground station's connection to its side of the link daemon.

    Not thread safe: use it from one thread (ZMQ sockets are single-threaded).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: CurveKeys | None = None) -> None:
        self.sock = make_socket(ctx, zmq.DEALER, endpoint, bind=False, curve=curve)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.send_hello()

    def send_hello(self) -> None:
        """Tell the link this peer is (still) here."""
        try:
            self.sock.send(HELLO, zmq.NOBLOCK)
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
