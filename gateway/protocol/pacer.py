"""Pacing frames at the link's rate, with bounded catch-up credit (pure logic, no clock).

:class:`Pacer` keeps the link busy at its rate and no faster: one frame per
``frame_size * 8 / rate_bps / time_scale`` wall seconds, with at most
``burst`` frames of catch-up credit when the event loop ran late.
"""

from __future__ import annotations


class Pacer:
    """Paces frames at a fixed interval with bounded catch-up credit."""

    def __init__(self, interval_s: float, burst: int = 1) -> None:
        if interval_s <= 0:
            raise ValueError(f"pacing interval must be positive, got {interval_s}")
        self.interval = interval_s
        self.burst = max(0, burst)
        self._next: float | None = None

    def set_interval(self, interval_s: float) -> None:
        """Change the rate (e.g. when the link reports a new rate or time scale)."""
        if interval_s > 0:
            self.interval = interval_s

    def wait(self, now: float) -> float:
        """Seconds until the next frame may go (0 if it may go now)."""
        if self._next is None:
            return 0.0
        return max(0.0, self._next - now)

    def ready(self, now: float) -> bool:
        """Whether a frame may be sent at ``now``."""
        return self.wait(now) <= 0.0

    def sent(self, now: float) -> None:
        """Account for one frame sent at ``now``."""
        base = now if self._next is None else max(self._next, now - self.burst * self.interval)
        self._next = base + self.interval

    def reset(self) -> None:
        """Forget accumulated state (after the link was down: no credit for idle time)."""
        self._next = None
