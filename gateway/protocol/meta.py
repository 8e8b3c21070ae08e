"""The META frame's payload: what the ground station learns about a message besides its bitstream.

One small msgpack map ``{"name", "size", "codec", "accepted_at", "expires_at"}``
(the source file name, its size in bytes, the codec, when the sender accepted
it, in UTC seconds: the start of the end-to-end latency the ground reports,
and when the sender gives it up: the ground previews a message whose
lifetime is nearly over), sent in one META frame outside the image budget.
The sender packs it to fit one frame's payload (dropping the name if it must);
the ground station reads it as untrusted input: bounded, and anything
malformed reads as an empty record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

MAX_NAME = 120  #: characters of the source file name carried


@dataclass(frozen=True)
class MessageMeta:
    """What the META frame says about one message (every field may be missing on the ground)."""

    name: str | None = None
    size: int | None = None
    codec: str | None = None
    accepted_at: float | None = None  #: sender's wall clock (Unix seconds) when the job was accepted
    expires_at: float | None = None  #: sender's wall clock when it gives the job up (accepted_at + its arq.ttl_s)

    def pack(self, capacity: int) -> bytes:
        """The payload, at most ``capacity`` bytes (the name is dropped when it would not fit)."""
        fields = {"name": (self.name or "")[:MAX_NAME], "size": self.size, "codec": self.codec,
                  "accepted_at": self.accepted_at}
        if self.expires_at is not None:  # absent rather than null: what a sender before it sent
            fields["expires_at"] = self.expires_at
        raw = msgpack.packb(fields, use_bin_type=True)
        if len(raw) > capacity:
            raw = msgpack.packb({**fields, "name": ""}, use_bin_type=True)
        return raw

    @classmethod
    def unpack(cls, raw: bytes | None) -> "MessageMeta":
        """Read a payload from the link; anything malformed (or absent) gives an empty record."""
        if not raw:
            return cls()
        try:
            m: Any = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_str_len=1024, max_bin_len=1024,
                                     max_array_len=64, max_map_len=64)
        except Exception:  # a META frame is untrusted input like any other
            return cls()
        if not isinstance(m, dict):
            return cls()
        name, size, codec = m.get("name"), m.get("size"), m.get("codec")
        return cls(
            name if isinstance(name, str) else None,
            size if isinstance(size, int) and not isinstance(size, bool) else None,
            codec if isinstance(codec, str) else None,
            # Older senders send no times; a non-number or an absurd one reads as unknown.
            _time(m.get("accepted_at")),
            _time(m.get("expires_at")),
        )


def _time(v: Any) -> float | None:
    """A Unix time from the link, or None when it is not a plausible one."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e11 else None
