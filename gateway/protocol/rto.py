"""The retransmit timeout: RFC 6298 (SRTT/RTTVAR, Karn's rule), clamped to bounds (pure logic, no clock)."""

from __future__ import annotations


class RtoEstimator:
    """Retransmit timeout from measured round trips (RFC 6298), in wall seconds."""

    def __init__(self, initial_s: float, min_s: float, max_s: float, granularity_s: float = 0.001) -> None:
        self.min, self.max, self.g = min_s, max_s, granularity_s
        self.rto = min(max(initial_s, min_s), max_s)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def sample(self, rtt: float) -> None:
        """Fold in one round-trip measurement."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.samples += 1
        self.rto = min(max(self.srtt + max(self.g, 4 * self.rttvar), self.min), self.max)

    def set_bounds(self, min_s: float, max_s: float) -> None:
        """New clamp (the link's time scale changed)."""
        self.min, self.max = min_s, max_s
        self.rto = min(max(self.rto, min_s), max_s)
