"""Messages that hold enough frames but wait a grace period for their META frame (pure logic, no clock).

The ground assembles a message once it holds k frames *and* its META frame
(the source name for the JSON record), or once ``grace_s`` has passed
without it. The waiting list is bounded (``limit``: the oldest wait is cut
short when it is full) and every entry expires, so a flood of forged
one-frame messages costs bounded memory and no work per loop turn: only due
entries are looked at, in deadline order.
"""

from __future__ import annotations

import heapq


class MetaWaits:
    """Deadlines of messages waiting for their META frame (times in wall seconds)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the META wait list needs room for at least one message, got {limit}")
        self.limit = limit
        self._deadline: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []

    def start(self, message_id: int, deadline: float) -> list[int]:
        """Wait for ``message_id``'s META until ``deadline`` (no-op if it already waits).

        Returns the messages whose wait was cut short to make room: assemble them now.
        """
        if message_id in self._deadline:
            return []
        cut = []
        while len(self._deadline) >= self.limit:
            oldest = self._pop()
            if oldest is None:
                break
            cut.append(oldest)
        self._deadline[message_id] = deadline
        heapq.heappush(self._heap, (deadline, message_id))
        return cut

    def cap(self, latest: float) -> None:
        """Bring every deadline after ``latest`` forward to it (the link's time scale became known)."""
        for mid, d in self._deadline.items():
            if d > latest:
                self._deadline[mid] = latest
                heapq.heappush(self._heap, (latest, mid))

    def deadline(self, message_id: int) -> float | None:
        """When ``message_id`` stops waiting, or None if it does not wait."""
        return self._deadline.get(message_id)

    def discard(self, message_id: int) -> None:
        """Stop waiting for ``message_id`` (its META came, it was assembled, evicted or failed)."""
        if self._deadline.pop(message_id, None) is not None and len(self._heap) > 4 * len(self._deadline) + 64:
            # Entries of discarded waits are skipped when they come up; rebuild before they pile up.
            self._heap = [(d, m) for m, d in self._deadline.items()]
            heapq.heapify(self._heap)

    def due(self, now: float) -> list[int]:
        """Messages whose wait is over (removed)."""
        out = []
        self._drop_stale()  # a discarded wait's entry must not stand in for a later deadline
        while self._heap and self._heap[0][0] <= now:
            mid = self._pop()
            self._drop_stale()
            if mid is not None:
                out.append(mid)
        return out

    def next_due(self) -> float | None:
        """The earliest deadline, or None."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        while self._heap and self._deadline.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _pop(self) -> int | None:
        self._drop_stale()
        if not self._heap:
            return None
        _, mid = heapq.heappop(self._heap)
        del self._deadline[mid]
        return mid

    def __len__(self) -> int:
        return len(self._deadline)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._deadline
