"""The signed hello: how a daemon proves to the link that it may be the sender or the ground side.

The link sends each side's frames to the peer it last accepted a hello
from. Without CURVE, anyone who can reach the link could otherwise say hello
and take a side (issue 16: a DEALER saying hello every 10 ms captured the
ground's frames). So when the link has the frame key, a hello counts only if
it is signed with it::

    0   1   version (1)
    1   1   side: b"S" (sender) or b"G" (ground)
    2   8   timestamp, u64 milliseconds since the Unix epoch (the peer's clock)
    10  8   random nonce
    18  16  HMAC-SHA256(key, b"satgw-hello" + bytes 0..17), truncated

and the link accepts it only for the side it names, within
:data:`MAX_SKEW_S` of its own clock, and with a timestamp later than the last
hello it accepted for that side, so a recorded hello replayed later is
refused. The message on the wire is ``[HELLO, signed]``; a bare ``[HELLO]``
is what a peer without a key sends, accepted only by a link without one.
"""

from __future__ import annotations

import hmac
import os
import struct
import time

HELLO_VERSION = 1
SIDES = {"sender": b"S", "ground": b"G"}
SIGNED_SIZE = 34
MAX_SKEW_S = 60.0
_BODY = struct.Struct(">B1sQ8s")
_CONTEXT = b"satgw-hello"
_TAG = 16


class HelloRefused(Exception):
    """A hello that does not prove its sender holds the key (the reason is a sentence for the log)."""


def sign_hello(key: bytes, side: str, now: float | None = None) -> bytes:
    """A signed hello for ``side`` ("sender" or "ground")."""
    now = time.time() if now is None else now
    body = _BODY.pack(HELLO_VERSION, SIDES[side], int(now * 1000), os.urandom(8))
    return body + hmac.digest(key, _CONTEXT + body, "sha256")[:_TAG]


class HelloVerifier:
    """The link's check of signed hellos, one instance for both sides (remembers the last timestamp of each)."""

    def __init__(self, key: bytes, max_skew_s: float = MAX_SKEW_S) -> None:
        self.key, self.max_skew_s = key, max_skew_s
        self._last_ms: dict[str, int] = {}

    def verify(self, side: str, signed: bytes, now: float | None = None) -> None:
        """Accept ``signed`` as a hello for ``side`` or raise :class:`HelloRefused` saying why."""
        if len(signed) != SIGNED_SIZE:
            raise HelloRefused(f"a signed hello is {SIGNED_SIZE} bytes, got {len(signed)}")
        body, tag = signed[:-_TAG], signed[-_TAG:]
        if not hmac.compare_digest(hmac.digest(self.key, _CONTEXT + body, "sha256")[:_TAG], tag):
            raise HelloRefused("the hello's signature does not match: a peer without the frame key")
        version, named, ts_ms, _ = _BODY.unpack(body)
        if version != HELLO_VERSION:
            raise HelloRefused(f"hello version {version}; this link speaks {HELLO_VERSION}")
        if named != SIDES[side]:
            raise HelloRefused(f"a hello for the other side arrived on the {side} side")
        now = time.time() if now is None else now
        if abs(ts_ms / 1000 - now) > self.max_skew_s:
            raise HelloRefused(f"the hello's clock is {ts_ms / 1000 - now:+.0f} s off the link's "
                               f"(more than {self.max_skew_s:g} s): a replay, or set the clocks right")
        if ts_ms <= self._last_ms.get(side, -1):
            raise HelloRefused("the hello is not newer than the last one accepted: a replay")
        self._last_ms[side] = ts_ms
