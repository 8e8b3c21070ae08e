"""Link availability as seen from a daemon, in wall time (pure logic, no clock).

:class:`LinkWindow` tracks when the link is up from the link's ``schedule``
replies or a contact plan, and says whether a frame may start now: never
when the link is down or goes down before the frame is through.
"""

from __future__ import annotations

from typing import Any, Callable


class LinkWindow:
    """Link availability as seen from a daemon, in wall time.

    Fed either by :meth:`update_from_schedule` (the link daemon's ``schedule``
    reply: ``up``, ``next_change_in`` in link seconds, ``time_scale``) or by
    :meth:`update_from_model` (a contact plan's availability model and a
    mapping from wall to link time).
    """

    def __init__(self) -> None:
        self.known = False
        self.up = False
        self.until = 0.0  # wall time of the next change
        self.time_scale = 1.0
        self.forward_rate_bps: float | None = None
        self.return_rate_bps: float | None = None
        self.frame_size: int | None = None

    def update_from_schedule(self, reply: dict[str, Any], now: float) -> None:
        """Adopt a ``schedule`` reply; ``now`` is the wall time the request was *sent*.

        The link computed ``next_change_in`` somewhere between request and reply;
        counting from the request errs on the safe side (an early stop).
        """
        ts = float(reply.get("time_scale") or 1.0)
        self.time_scale = ts if ts > 0 else 1.0
        self.up = bool(reply.get("up"))
        nci = reply.get("next_change_in")
        self.until = float("inf") if nci is None else now + max(0.0, float(nci)) / self.time_scale
        for key in ("forward_rate_bps", "return_rate_bps"):
            v = reply.get(key)
            if isinstance(v, (int, float)) and v > 0:
                setattr(self, key, float(v))
        fs = reply.get("frame_size")
        if isinstance(fs, int) and fs > 0:
            self.frame_size = fs
        self.known = True

    def update_from_model(
        self, is_up: Callable[[float], bool], next_change: Callable[[float], float | None], link_now: float, now: float
    ) -> None:
        """Adopt an availability model evaluated at link time ``link_now`` (wall ``now``)."""
        self.up = bool(is_up(link_now))
        nxt = next_change(link_now)
        self.until = float("inf") if nxt is None else now + max(0.0, nxt - link_now) / self.time_scale
        self.known = True

    def mark_unknown(self) -> None:
        """The link could not be asked: send nothing until it answers again."""
        self.known = False

    def can_send(self, now: float, frame_wall_s: float, guard_s: float = 0.005) -> bool:
        """True if the link is up now and stays up while a frame started now is on the air.

        Two frame times are reserved (the frame before may still be on the air,
        pacing allows one frame of credit) plus ``guard_s`` for clock jitter.
        """
        if not self.known or not self.up:
            return False
        return now + 2 * frame_wall_s + guard_s < self.until

    def frame_interval(self, frame_size: int, rate_bps: float | None = None) -> float | None:
        """Wall seconds per frame at the forward rate (None while the rate is unknown)."""
        rate = rate_bps or self.forward_rate_bps
        if not rate:
            return None
        return frame_size * 8.0 / rate / self.time_scale
