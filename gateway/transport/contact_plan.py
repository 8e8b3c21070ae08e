"""When the link is up: always, in explicit windows, or in periodic passes.

All times are simulation seconds.  An availability object answers two
questions: :meth:`is_up` (is the link up at ``t``?) and :meth:`next_change`
(when does that answer next change?).  Up intervals are half open,
``[start, end)``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Protocol, Sequence


class Availability(Protocol):
    """What channels and daemons need to know about the link's schedule."""

    def is_up(self, t: float) -> bool:
        """True if the link is up at simulation time ``t``."""
        ...

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which :meth:`is_up` changes, or None if never."""
        ...


@dataclass(frozen=True)
class AlwaysUp:
    """The link never goes down."""

    def is_up(self, t: float) -> bool:
        """Always True."""
        return True

    def next_change(self, t: float) -> float | None:
        """Always None: nothing ever changes."""
        return None


class Windows:
    """The link is up only inside the given ``[start, end)`` windows.

    Overlapping or touching windows are merged, so :meth:`next_change` always
    names a real change.  Outside every window the link is down.
    """

    def __init__(self, windows: Sequence[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for start, end in sorted((float(s), float(e)) for s, e in windows):
            if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
                raise ValueError(f"window ({start}, {end}) must be finite with end > start")
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.windows: tuple[tuple[float, float], ...] = tuple((s, e) for s, e in merged)
        # Flattened boundaries: t is up iff an odd number of boundaries are <= t.
        self._edges = [x for w in self.windows for x in w]

    def is_up(self, t: float) -> bool:
        """True if ``t`` lies inside a window."""
        return bisect.bisect_right(self._edges, t) % 2 == 1

    def next_change(self, t: float) -> float | None:
        """The next window start or end after ``t``, or None after the last window."""
        i = bisect.bisect_right(self._edges, t)
        return self._edges[i] if i < len(self._edges) else None

    def __repr__(self) -> str:
        return f"Windows({list(self.windows)!r})"


@dataclass(frozen=True)
class PeriodicPasses:
    """Passes of ``duration_s`` every ``period_s``, the first starting at ``offset_s``.

    The pattern extends to negative times too, so ``is_up`` is defined for
    every ``t``.  ``duration_s == period_s`` means always up.
    """

    period_s: float
    duration_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise ValueError(f"period_s must be a positive number, got {self.period_s}")
        if not (0 < self.duration_s <= self.period_s):
            raise ValueError(f"duration_s must be in (0, period_s], got {self.duration_s}")

    def _last_start(self, t: float) -> float:
        """Start of the latest pass beginning at or before ``t``."""
        period = self.period_s
        start = self.offset_s + math.floor((t - self.offset_s) / period) * period
        # Rounding can put the start one period off; nudge it so start <= t < start + period.
        if start > t:
            start -= period
        elif start + period <= t:
            start += period
        return start

    def is_up(self, t: float) -> bool:
        """True during a pass."""
        return self.duration_s >= self.period_s or t < self._last_start(t) + self.duration_s

    def next_change(self, t: float) -> float | None:
        """End of the current pass, or start of the next one."""
        if self.duration_s >= self.period_s:
            return None
        start = self._last_start(t)
        end = start + self.duration_s
        return end if t < end else start + self.period_s


def up_until(availability: Availability, t: float) -> float:
    """End of the up interval that contains ``t`` (``inf`` if it never ends).

    Only meaningful when ``availability.is_up(t)``.
    """
    change = availability.next_change(t)
    return math.inf if change is None else change
