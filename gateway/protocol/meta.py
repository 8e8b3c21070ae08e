"""The META frame's payload: what the ground station learns about a message besides its bitstream.

One small msgpack map ``{"name", "size", "codec", "accepted_at", "expires_at"}``
(the source file name, its size in bytes, the codec, when the sender accepted
it, in UTC seconds: the start of the end-to-end latency the ground reports,
and when the sender gives it up: the ground previews a message whose
lifetime is nearly over), sent in one META frame outside the image budget.
A job sent with ``codec: auto`` adds ``"auto"``: how the codec was chosen
(:class:`CodecChoice`: the metric, the seconds spent choosing, and per
candidate its state and its measured or predicted MS-SSIM and PSNR), packed
tight (qualities as integers: MS-SSIM in 1e-4, PSNR in 0.01 dB, the time in
milliseconds; one-letter codes). Older grounds ignore the keys; from older
senders they are simply absent. The sender packs it to fit one frame's
payload (dropping the choice's candidates, then the name, then the choice if
it must); the ground station reads it as untrusted input: bounded, and
anything malformed reads as an empty record (a malformed ``auto`` alone reads
as no choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

MAX_NAME = 120  #: characters of the source file name carried
MAX_CANDIDATES = 16  #: candidates of a codec choice carried (and read)
#: One-letter wire codes of a candidate's state and of how its quality is known.
STATES = {"chosen": "c", "finished": "f", "dropped": "d", "unfit": "u", "failed": "x"}
KINDS = {"measured": "m", "predicted": "p"}


@dataclass(frozen=True)
class CandidateQuality:
    """One candidate of a codec choice: its state and its expected quality (None: unknown)."""

    codec: str
    state: str
    kind: str | None = None
    ms_ssim: float | None = None
    psnr: float | None = None


@dataclass(frozen=True)
class CodecChoice:
    """How the sender chose the codec of a ``codec: auto`` job (see the module docstring)."""

    metric: str
    seconds: float
    candidates: tuple[CandidateQuality, ...] = ()

    def wire(self, with_candidates: bool = True) -> dict[str, Any]:
        """The compact form that travels in the META payload."""
        out: dict[str, Any] = {"m": self.metric, "s": _fixed(self.seconds, 1000)}
        if with_candidates:
            out["c"] = [[c.codec, STATES.get(c.state, "?"), _fixed(c.ms_ssim, 10000), _fixed(c.psnr, 100),
                         KINDS.get(c.kind or "", None)] for c in self.candidates[:MAX_CANDIDATES]]
        return out

    @classmethod
    def from_wire(cls, raw: Any) -> "CodecChoice | None":
        """Read :meth:`wire`'s form from the link; None when it is absent or malformed."""
        if not isinstance(raw, dict) or not isinstance(raw.get("m"), str) or not _number(raw.get("s")):
            return None
        seconds = raw["s"] / 1000
        states = {v: k for k, v in STATES.items()}
        kinds = {v: k for k, v in KINDS.items()}
        cands = []
        for item in raw.get("c") or []:
            if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str)):
                return None
            codec, state, ms, ps, kind = item
            cands.append(CandidateQuality(codec[:16], states.get(state, "unknown"), kinds.get(kind),
                                          ms / 10000 if _number(ms) else None, ps / 100 if _number(ps) else None))
            if len(cands) >= MAX_CANDIDATES:
                break
        return cls(raw["m"][:16], seconds, tuple(cands))

    def record(self, chosen: str | None) -> dict[str, Any]:
        """The ground's JSON form (``codec_choice`` in ``<id>.json``); ``chosen`` is the codec that was sent."""
        return {
            "requested": "auto",
            "chosen": chosen,
            "metric": self.metric,
            "seconds": round(self.seconds, 4),
            "candidates": [
                {"codec": c.codec, "state": c.state, "kind": c.kind,
                 "ms_ssim": None if c.ms_ssim is None else round(c.ms_ssim, 5),
                 "psnr": None if c.psnr is None else round(c.psnr, 3)}
                for c in self.candidates
            ],
        }


def _fixed(v: float | None, per_unit: int) -> int | None:
    """``v`` as an integer count of 1/``per_unit`` (None stays None): exact enough, and 1-5 bytes in msgpack."""
    return None if v is None else int(round(v * per_unit))


def _number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12


@dataclass(frozen=True)
class MessageMeta:
    """What the META frame says about one message (every field may be missing on the ground)."""

    name: str | None = None
    size: int | None = None
    codec: str | None = None
    accepted_at: float | None = None  #: sender's wall clock (Unix seconds) when the job was accepted
    expires_at: float | None = None  #: sender's wall clock when it gives the job up (accepted_at + its arq.ttl_s)
    choice: CodecChoice | None = None  #: how ``codec: auto`` chose (None: the codec was asked for)

    def pack(self, capacity: int) -> bytes:
        """The payload, at most ``capacity`` bytes where it can be: what does not fit is dropped, in the order
        the choice's candidates, the name, the choice."""
        fields: dict[str, Any] = {"name": (self.name or "")[:MAX_NAME], "size": self.size, "codec": self.codec,
                                  "accepted_at": self.accepted_at}
        if self.expires_at is not None:  # absent rather than null: what a sender before it sent
            fields["expires_at"] = self.expires_at
        tries = [fields]
        if self.choice is not None:
            tries = [{**fields, "auto": self.choice.wire()}, {**fields, "auto": self.choice.wire(False)},
                     {**fields, "name": "", "auto": self.choice.wire(False)}]
        tries.append({**fields, "name": ""})
        for candidate in tries:
            raw = msgpack.packb(candidate, use_bin_type=True)
            if len(raw) <= capacity:
                return raw
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
        try:
            choice = CodecChoice.from_wire(m.get("auto"))
        except (TypeError, ValueError, OverflowError):
            choice = None
        return cls(
            name if isinstance(name, str) else None,
            size if isinstance(size, int) and not isinstance(size, bool) else None,
            codec if isinstance(codec, str) else None,
            # Older senders send no times; a non-number or an absurd one reads as unknown.
            _time(m.get("accepted_at")),
            _time(m.get("expires_at")),
            choice,
        )


def _time(v: Any) -> float | None:
    """A Unix time from the link, or None when it is not a plausible one."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e11 else None
