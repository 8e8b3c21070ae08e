"""Making ZeroMQ sockets the one way every process on the wire makes them.

Sockets never block on close (LINGER 0), queue boundedly, can refuse
oversized messages before allocating them, and can be CURVE-secured: a
server socket starts one ZAP authenticator per context that admits only the
listed client keys.
"""

from __future__ import annotations

import zmq

from gateway.transport.curve import CurveKeys

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
