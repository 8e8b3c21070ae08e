"""What the page learns from the daemons that answer: the ground's and the link's view of the link, the sender's queue.

Each source is a control endpoint (``status`` of the ground station and the
sender, ``stats`` and ``schedule`` of the link simulator) asked with a short
timeout; one that does not answer reads as unreachable and the page says so.
Utilization and loss are rates, so :class:`LinkPanel` keeps the last
:data:`WINDOW_S` seconds of counter samples and reports the change over them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from gateway.errors import SatgwError
from gateway.transport.lazy_pirate import ask

WINDOW_S = 30.0  #: utilization and loss are measured over this many wall seconds
TIMEOUT_S = 0.5  #: a daemon that takes longer is treated as unreachable this round


@dataclass(frozen=True)
class Endpoints:
    """Control endpoints the page may ask (None: do not ask)."""

    receiver: str | None = None
    sender: str | None = None
    link: str | None = None


class Sources:
    """Asks each configured daemon once per :meth:`poll`; remembers the replies and who answered."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.ctx = zmq.Context()
        self.replies: dict[str, dict[str, Any] | None] = {}
        self.errors: dict[str, str] = {}

    def _ask(self, key: str, endpoint: str | None, req: dict[str, Any]) -> dict[str, Any] | None:
        if endpoint is None:
            return None
        try:
            reply = ask(endpoint, req, timeout_s=TIMEOUT_S, retries=1, ctx=self.ctx)
        except SatgwError as e:
            self.errors[key] = str(e)
            return None
        if not reply.get("ok"):
            self.errors[key] = str(reply.get("error"))
            return None
        self.errors.pop(key, None)
        return reply

    def poll(self) -> dict[str, dict[str, Any] | None]:
        """Fresh replies: ``receiver``, ``sender``, ``link_stats``, ``link_schedule`` (None: no answer)."""
        e = self.endpoints
        stats = self._ask("link", e.link, {"cmd": "stats"})
        self.replies = {
            "receiver": self._ask("receiver", e.receiver, {"cmd": "status"}),
            "sender": self._ask("sender", e.sender, {"cmd": "status"}),
            "link_stats": stats,
            # A link that did not answer one request is not asked a second time this round.
            "link_schedule": self._ask("link", e.link, {"cmd": "schedule"}) if stats is not None else None,
        }
        return self.replies

    def close(self) -> None:
        """Close the sockets."""
        self.ctx.destroy(linger=0)


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else max(0.0, min(1.0, num / den))


class LinkPanel:
    """The link as the page shows it: up or in outage, utilization and loss over the last :data:`WINDOW_S` s.

    The link simulator's counters are the most exact (frames on the air,
    frames lost); without them the ground's view is used: the link state
    from its schedule, utilization from the frames that arrived, and loss
    from frames that failed their CRC (or the sender's retransmissions,
    when it answers).
    """

    def __init__(self, frame_size: int) -> None:
        self.frame_size = frame_size
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def update(self, replies: dict[str, dict[str, Any] | None], now: float | None = None) -> dict[str, Any]:
        """The link panel's fields from one round of replies."""
        now = time.monotonic() if now is None else now
        lstats, sched, ground, sender = (replies.get("link_stats"), replies.get("link_schedule"),
                                         replies.get("receiver"), replies.get("sender"))
        panel: dict[str, Any] = {"state": "unknown", "source": None, "utilization": None, "loss": None,
                                 "loss_source": None, "rate_bps": None, "time_scale": None, "next_change_s": None,
                                 "window_s": WINDOW_S}
        sample: dict[str, float] = {}
        if sched is not None:
            panel.update(source="link", state="up" if sched.get("up") else "outage",
                         rate_bps=sched.get("forward_rate_bps"), time_scale=sched.get("time_scale"))
            nci, ts = sched.get("next_change_in"), sched.get("time_scale") or 1.0
            panel["next_change_s"] = None if nci is None else round(float(nci) / ts, 1)  # wall seconds
        elif ground is not None:
            link = ground.get("link") or {}
            state = "unknown" if not link.get("known") else "up" if link.get("up") else "outage"
            panel.update(source="ground", state=state, rate_bps=link.get("forward_rate_bps"),
                         time_scale=link.get("time_scale"))
        if lstats is not None:
            fwd = lstats.get("forward") or {}
            drops = fwd.get("dropped") or {}
            sample["on_air"] = fwd.get("in", 0) - drops.get("queue", 0) - drops.get("outage", 0)
            sample["lost"] = drops.get("loss", 0) + drops.get("burst", 0) + fwd.get("corrupted", 0)
        if ground is not None:
            c = ground.get("counters") or {}
            sample["arrived"] = c.get("frames_in", 0)
            sample["crc"] = c.get("bad_CRCError", 0)
        if sender is not None:
            c = sender.get("counters") or {}
            sample["sent"], sample["retx"] = c.get("frames_sent", 0), c.get("retransmissions", 0)
        self._samples.append((now, sample))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()
        t0, first = self._samples[0]
        dt = now - t0

        def delta(key: str) -> float | None:
            return sample[key] - first[key] if key in sample and key in first else None

        rate, ts = panel["rate_bps"], panel["time_scale"] or 1.0
        frames = delta("on_air") if delta("on_air") is not None else delta("arrived")
        if rate and dt > 0 and frames is not None:
            panel["utilization"] = _ratio(frames * self.frame_size * 8 / dt, float(rate) * float(ts))
        for num, den, source in (("lost", "on_air", "link"), ("retx", "sent", "sender"), ("crc", "arrived", "ground")):
            dn, dd = delta(num), delta(den)
            if dn is not None and dd is not None:
                panel["loss"], panel["loss_source"] = (_ratio(dn, dd) if dd > 0 else None), source
                break
        return panel
