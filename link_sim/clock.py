"""Clocks that tell the link simulator what simulation time it is.

:class:`VirtualClock` moves only when told to, so tests run hours of link in
milliseconds.  :class:`RealClock` follows the wall clock, sped up by
``time_scale`` simulated seconds per wall second (60 turns a 10-minute pass
into 10 s).  Simulation time starts at 0.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells simulation time."""

    def now(self) -> float:
        """Current simulation time in seconds."""
        ...


class VirtualClock:
    """Simulation time that only moves by :meth:`advance` or :meth:`set`."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        """Current simulation time."""
        return self._t

    def advance(self, dt: float) -> float:
        """Move forward by ``dt`` seconds (>= 0); returns the new time."""
        if dt < 0:
            raise ValueError(f"a clock cannot go backwards (dt={dt})")
        self._t += dt
        return self._t

    def set(self, t: float) -> None:
        """Jump to ``t`` (not earlier than now)."""
        if t < self._t:
            raise ValueError(f"a clock cannot go backwards ({t} < {self._t})")
        self._t = float(t)


class RealClock:
    """Wall time since construction, times ``time_scale``."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale = float(time_scale)
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Simulation seconds since the clock started."""
        return (time.monotonic() - self._t0) * self.time_scale

    def wall_until(self, t: float) -> float:
        """Wall seconds until simulation time ``t`` (0 if already past)."""
        return max(0.0, (t - self.now()) / self.time_scale)
