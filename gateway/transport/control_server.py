"""The one control-socket loop: msgpack requests in, replies out, on a REP socket, for every daemon.

A request is a msgpack map with ``cmd``; the reply is a map with ``ok`` and,
when ``ok`` is false, an ``error`` that says what to send instead. The
sender, the ground station and the link simulator each give a table of
commands; ``ping`` is answered here for all of them. Garbage (not msgpack,
not a map, an unknown command) gets an error reply, and an exception in a
command handler becomes an ``internal error`` reply and one log line: nothing
a client sends can take a daemon down.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import msgpack
import zmq

from gateway.transport.eventlog import EventLog

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Answers requests waiting on a bound REP socket, a bounded batch per :meth:`serve` call.

    ``on_garbage`` is called once per request that is not a valid command
    (the link counts them).
    """

    def __init__(
        self,
        sock: zmq.Socket,
        commands: Mapping[str, Handler],
        log: EventLog,
        *,
        batch: int = 16,
        on_garbage: Callable[[], None] | None = None,
    ) -> None:
        self.sock, self.log, self.batch, self.on_garbage = sock, log, batch, on_garbage
        self.commands: dict[str, Handler] = {"ping": lambda req: {"ok": True, "pong": True}, **commands}

    def serve(self) -> None:
        """Answer the requests waiting now (at most ``batch``, so other sockets are not starved)."""
        for _ in range(self.batch):
            try:
                raw = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.sock.send(msgpack.packb(self.answer(raw), use_bin_type=True))

    def answer(self, raw: bytes) -> dict[str, Any]:
        """The reply to one raw request."""
        names = ", ".join(sorted(self.commands))
        try:
            req = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated exception types on garbage
            return self._garbage(f"request is not valid msgpack ({type(e).__name__}); send a map with 'cmd', one of {names}")
        cmd = req.get("cmd") if isinstance(req, dict) else None
        handler = self.commands.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            if not isinstance(req, dict):
                return self._garbage(f"a request must be a map with 'cmd' (one of {names}), got a {type(req).__name__}")
            return self._garbage(f"unknown cmd {str(cmd)[:40]!r}; commands are {names}")
        try:
            return handler(req)
        except Exception as e:  # a bug in one answer must not kill the daemon
            self.log.error("control_error", cmd=cmd, error=f"{type(e).__name__}: {e}")
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}

    def _garbage(self, error: str) -> dict[str, Any]:
        if self.on_garbage is not None:
            self.on_garbage()
        return {"ok": False, "error": error}
