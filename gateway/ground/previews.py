"""Previews of messages whose frames stopped coming: when one is due, and the prefix it is decoded from.

A message still being received may be written early as a preview, decoded
from its longest intact prefix: the data frames 0..j-1 that arrived without a
gap (:func:`intact_prefix`). The erasure code is tried first, but zfec is
MDS: fewer than k frames rebuild no data frame at all, so parity helps only
once k frames are in, and then the whole message is there (it waits for its
META frame, or is about to be assembled).

:class:`PreviewPlanner` (pure logic, no clock: times are the caller's
monotonic seconds) decides when: a message is due once no frame of it came
for the quiet time, or at the deadline the caller gives (its sender's
lifetime nearly over), or at once when the link's pass ended
(:meth:`PreviewPlanner.force_all`). Due messages wait in arrival order for
the decode worker to be idle; after an attempt a message is not due again
until another frame of it arrives. Memory is bounded by the messages the
caller tracks (the frame store's incomplete ones; it forgets each one that
leaves ``receiving``), and only due deadlines cost work.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from packetizer.errors import PacketizerError
from packetizer.frame import Frame, FrameType
from packetizer.segment import assemble

#: Preview decodes of one message that crash or hang before the ground stops previewing it (until a restart).
MAX_PREVIEW_CRASHES = 2


def intact_prefix_length(received: Iterable[int], k: int) -> int:
    """j: how many data frames 0..j-1 arrived without a gap (k once any k frames are in: the code rebuilds all)."""
    have = set(received)
    if len(have) >= k:
        return k
    j = 0
    while j in have:
        j += 1
    return min(j, k)


def intact_prefix(frames: list[Frame], k: int) -> tuple[int, bytes]:
    """(j, the bytes of data frames 0..j-1) from a message's stored frames.

    With at least k distinct frames the message is rebuilt (erasure decoding
    included) and j = k. Raises :class:`~packetizer.errors.PacketizerError`
    when the frames do not make one consistent message.
    """
    indices = {f.index for f in frames}
    if len(indices) >= k:
        data = assemble(frames)
        if data is None:  # cannot happen with k distinct frames; fall back to the plain prefix
            raise PacketizerError("k distinct frames did not assemble")
        return k, data
    data_frames = {f.index: f.payload for f in frames if f.type == FrameType.DATA}
    j, parts = 0, []
    while j in data_frames:
        parts.append(data_frames[j])
        j += 1
    return j, b"".join(parts)


@dataclass
class _Entry:
    deadline: float | None = None  # when it is due, None while idle (tried; waits for a new frame)
    tried_frames: int = 0  # the largest prefix already tried (written or found to hold nothing new)
    crashes: int = 0
    ready: bool = False  # waiting in the queue for the decode worker
    never: bool = False  # no previews for this message (its codec decodes only complete streams, ...)


class PreviewPlanner:
    """Receiving messages' preview deadlines, and the queue of those due (times: the caller's seconds)."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int]] = []
        self._ready: deque[int] = deque()

    # --- what happened ----------------------------------------------------------------------

    def touch(self, message_id: int, deadline: float) -> None:
        """A frame of ``message_id`` arrived: it is due at ``deadline`` (its quiet time, or sooner), unless a frame
        comes first. A message already waiting for the worker stays in the queue."""
        e = self._entries.setdefault(message_id, _Entry())
        if e.never or e.ready:
            return
        self._set(message_id, e, deadline)

    def force(self, message_id: int, now: float) -> None:
        """Make a tracked message due at ``now`` (a failed preview's retry is due)."""
        e = self._entries.get(message_id)
        if e is not None and not e.never and not e.ready:
            self._set(message_id, e, now)

    def force_all(self, now: float) -> int:
        """The link's pass ended: every tracked message that may have something new is due now; how many."""
        n = 0
        for mid, e in self._entries.items():
            if not e.never and not e.ready and e.deadline is not None:
                self._set(mid, e, now)
                n += 1
        return n

    def cap(self, latest: float) -> None:
        """Bring every pending deadline after ``latest`` forward to it (the link's time scale became known)."""
        for mid, e in self._entries.items():
            if not e.never and not e.ready and e.deadline is not None and e.deadline > latest:
                self._set(mid, e, latest)

    def tried(self, message_id: int, frames: int) -> None:
        """A preview of ``frames`` data frames was attempted (written, or found to hold nothing new).

        A frame that arrived meanwhile keeps its deadline: it may make a longer prefix.
        """
        e = self._entries.get(message_id)
        if e is not None:
            e.tried_frames = max(e.tried_frames, frames)

    def idle(self, message_id: int) -> None:
        """Nothing to do for now (no longer prefix than before): not due until the next frame."""
        e = self._entries.get(message_id)
        if e is not None:
            e.deadline = None

    def crashed(self, message_id: int) -> bool:
        """A preview decode of ``message_id`` crashed or hung; True when the ground gives up previewing it."""
        e = self._entries.get(message_id)
        if e is None:
            return True
        e.crashes += 1
        if e.crashes >= MAX_PREVIEW_CRASHES:
            self.never(message_id)
        return e.never

    def never(self, message_id: int) -> None:
        """No previews for ``message_id`` (its codec cannot decode a prefix, its header is bad, ...)."""
        e = self._entries.setdefault(message_id, _Entry())
        e.never, e.deadline, e.ready = True, None, False

    def forget(self, message_id: int) -> None:
        """``message_id`` left ``receiving`` (assembled, failed, evicted): drop it."""
        e = self._entries.pop(message_id, None)
        if e is not None and len(self._heap) > 4 * len(self._entries) + 64:
            # Entries of dropped messages are skipped when they come up; rebuild before they pile up.
            self._heap = [(x.deadline, m) for m, x in self._entries.items() if x.deadline is not None and not x.ready]
            heapq.heapify(self._heap)

    # --- what to do -------------------------------------------------------------------------

    def due(self, now: float) -> int:
        """Move every message whose deadline passed into the queue; how many are queued now."""
        while self._heap and self._heap[0][0] <= now:
            deadline, mid = heapq.heappop(self._heap)
            e = self._entries.get(mid)
            if e is None or e.ready or e.never or e.deadline != deadline:
                continue  # dropped, re-touched, or already queued: a stale heap entry
            e.ready, e.deadline = True, None
            self._ready.append(mid)
        return len(self._ready)

    def pop_ready(self) -> int | None:
        """The message that has waited longest for the decode worker, or None."""
        while self._ready:
            mid = self._ready.popleft()
            e = self._entries.get(mid)
            if e is not None and e.ready:
                e.ready = False
                if not e.never:
                    return mid
        return None

    def tried_frames(self, message_id: int) -> int:
        """The largest prefix already tried for ``message_id`` since the ground started."""
        e = self._entries.get(message_id)
        return 0 if e is None else e.tried_frames

    def next_due(self) -> float | None:
        """The earliest deadline still ahead (stale heap entries dropped), or None."""
        while self._heap:
            deadline, mid = self._heap[0]
            e = self._entries.get(mid)
            if e is not None and not e.ready and not e.never and e.deadline == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def queued(self) -> int:
        """Messages due and waiting for the decode worker."""
        return sum(1 for m in self._ready if (e := self._entries.get(m)) is not None and e.ready)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._entries

    def _set(self, mid: int, e: _Entry, deadline: float) -> None:
        e.deadline = deadline
        heapq.heappush(self._heap, (deadline, mid))
