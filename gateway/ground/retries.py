"""When to try a decode again that failed for a reason of the host (pure logic, no clock).

A decode that the host made fail (a full or read-only outbox, memory, a
model bundle that does not load) is not the message's fault: the ground
station keeps the bitstream and tries again, waiting ``initial_s``, then
twice as long each time up to ``max_s``. Nothing here gives up: only a
bitstream that is itself bad ends as failed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Retry:
    """One message waiting for its next decode attempt."""

    message_id: int
    reason: str
    failures: int
    due: float


class DecodeRetries:
    """Messages whose decode failed for a host reason, and when each is tried again (times in wall seconds)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"retry delays must satisfy 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s, self.max_s = initial_s, max_s
        self._waiting: dict[int, Retry] = {}
        self._failures: dict[int, int] = {}

    def failed(self, message_id: int, reason: str, now: float) -> Retry:
        """A decode of ``message_id`` failed for ``reason``; schedule the next try."""
        n = self._failures.get(message_id, 0) + 1
        self._failures[message_id] = n
        delay = min(self.max_s, self.initial_s * 2 ** min(n - 1, 30))
        r = self._waiting[message_id] = Retry(message_id, reason, n, now + delay)
        return r

    def succeeded(self, message_id: int) -> None:
        """The message is finished (done or failed for good): forget it."""
        self._waiting.pop(message_id, None)
        self._failures.pop(message_id, None)

    def due(self, now: float) -> list[int]:
        """Messages whose next try is due (removed from the waiting list; still remembered for backoff)."""
        ready = [mid for mid, r in self._waiting.items() if r.due <= now]
        for mid in ready:
            del self._waiting[mid]
        return ready

    def next_due(self) -> float | None:
        """The earliest due time of a waiting message, or None."""
        return min((r.due for r in self._waiting.values()), default=None)

    def waiting(self) -> list[Retry]:
        """The messages waiting for a retry, soonest first (for status)."""
        return sorted(self._waiting.values(), key=lambda r: r.due)

    def __len__(self) -> int:
        return len(self._waiting)
