"""The ZeroMQ guide's "lazy pirate" request/reply client.

A REQ socket, a bounded wait for the reply, and on timeout the socket is
closed and reopened (a REQ socket that lost its reply is stuck forever
otherwise) and the request retried a bounded number of times. The daemons use
it to ask the link for its schedule; the command line uses it to talk to the
daemons. Every request and reply is a msgpack map.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq

from gateway.errors import DaemonError
from gateway.transport.curve import CurveKeys
from gateway.transport.sockets import make_socket

#: Largest reply a client accepts (status tables are small; this bounds a hostile server).
MAX_REPLY_BYTES = 16 * 1024 * 1024


class LazyPirate:
    """A REQ client that survives a dead or restarted server.

    Use :meth:`request` for blocking calls, or :meth:`send` / :meth:`poll_reply`
    from an event loop (the socket is :attr:`sock`; it changes after a reset).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        curve: CurveKeys | None = None,
    ) -> None:
        self.ctx, self.endpoint, self.timeout_s, self.retries, self.curve = ctx, endpoint, timeout_s, retries, curve
        self.sock: zmq.Socket = self._open()
        self.pending_since: float | None = None

    def _open(self) -> zmq.Socket:
        sock = make_socket(self.ctx, zmq.REQ, self.endpoint, bind=False, curve=self.curve)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        return sock

    def reset(self) -> None:
        """Drop the socket (and any lost request) and open a fresh one."""
        self.sock.close(linger=0)
        self.sock = self._open()
        self.pending_since = None

    def send(self, request: dict[str, Any]) -> None:
        """Send one request without waiting (event-loop use)."""
        if self.pending_since is not None:
            self.reset()
        self.sock.send(msgpack.packb(request, use_bin_type=True))
        self.pending_since = time.monotonic()

    def poll_reply(self) -> dict[str, Any] | None:
        """The reply if one is waiting, else None; resets the socket once the timeout passed."""
        if self.pending_since is None:
            return None
        try:
            raw = self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            if time.monotonic() - self.pending_since > self.timeout_s:
                self.reset()
            return None
        self.pending_since = None
        try:
            return _decode_reply(raw)
        except DaemonError as e:
            return {"ok": False, "error": str(e)}

    def timed_out(self) -> bool:
        """Whether the outstanding request has waited longer than the timeout."""
        return self.pending_since is not None and time.monotonic() - self.pending_since > self.timeout_s

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` and wait for the reply, retrying; raises DaemonError when nobody answers."""
        for _ in range(self.retries):
            self.send(request)
            if self.sock.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                raw = self.sock.recv()
                self.pending_since = None
                return _decode_reply(raw)
            self.reset()
        raise DaemonError(
            f"no reply from {self.endpoint} after {self.retries} tries of {self.timeout_s:g} s; "
            "is the daemon running and is the endpoint right?"
        )

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)


def _decode_reply(raw: bytes) -> dict[str, Any]:
    try:
        reply = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated exception types on garbage
        raise DaemonError(f"reply is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(reply, dict):
        raise DaemonError(f"reply is a {type(reply).__name__}, expected a map")
    return reply


def ask(
    endpoint: str,
    request: dict[str, Any],
    *,
    timeout_s: float = 10.0,
    retries: int = 3,
    ctx: zmq.Context | None = None,
    curve: CurveKeys | None = None,
) -> dict[str, Any]:
    """One request with a throwaway lazy-pirate client: the reply, or :class:`DaemonError` when nobody answers."""
    client = LazyPirate(ctx or zmq.Context.instance(), endpoint, timeout_s=timeout_s, retries=retries, curve=curve)
    try:
        return client.request(request)
    finally:
        client.close()
