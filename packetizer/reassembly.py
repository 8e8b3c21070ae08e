"""Bounded in-memory reassembly of many interleaved messages from a lossy link."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from packetizer.ack import AckEntry
from packetizer.errors import ReassemblyError
from packetizer.frame import Frame, FrameType
from packetizer.segment import MessageFrames

log = logging.getLogger(__name__)

_DATA = FrameType.DATA
_PARITY = FrameType.PARITY


class Reassembler:
    """Collects DATA/PARITY frames of many messages and hands out each message once.

    Frames may arrive in any order, duplicated, with gaps and interleaved
    across messages. Memory is bounded: at most ``max_open_messages``
    incomplete messages holding at most ``max_bytes`` payload bytes; a message
    with no new frame for ``timeout_s`` is dropped. When a bound is hit the
    least recently active message is evicted. Completed message ids are
    remembered (the last ``max_completed``) so late duplicates and
    retransmissions never produce a second copy.

    ``add`` never raises for what is inside a frame: frames that contradict
    their message (e.g. a reused message id with other counts) are dropped,
    counted in ``stats["rejected"]`` and logged. ACK and META frames are not
    message data; they are counted in ``stats["ignored"]``.

    Not thread-safe: use one per receiving thread.
    """

    def __init__(
        self,
        max_open_messages: int = 256,
        max_bytes: int = 64 * 2**20,
        timeout_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_completed: int = 65536,
    ) -> None:
        if max_open_messages < 1 or max_bytes < 1 or timeout_s <= 0 or max_completed < 1:
            raise ValueError("Reassembler limits must be positive")
        self.max_open_messages = max_open_messages
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_completed = max_completed
        self._clock = clock
        # message id -> (state, time of its last new frame); ordered least recently active first.
        self._open: OrderedDict[int, list] = OrderedDict()
        # message id -> n, for the last max_completed completed messages, oldest first.
        self._completed: OrderedDict[int, int] = OrderedDict()
        self._bytes = 0
        self.stats: dict[str, int] = {
            "frames": 0,
            "duplicates": 0,
            "completed": 0,
            "fec_recovered": 0,
            "late": 0,
            "rejected": 0,
            "ignored": 0,
            "evicted_timeout": 0,
            "evicted_memory": 0,
            "evicted_open_limit": 0,
            "open_messages": 0,
            "open_bytes": 0,
        }

    def add(self, frame: Frame) -> bytes | None:
        """Take one frame; return the whole message the one time it completes, else None."""
        stats = self.stats
        stats["frames"] += 1
        t = frame.type
        if t != _DATA and t != _PARITY:
            stats["ignored"] += 1
            return None
        mid = frame.message_id
        if mid in self._completed:
            stats["late"] += 1
            return None
        now = self._clock()
        opened = self._open
        if opened and next(iter(opened.values()))[1] <= now - self.timeout_s:
            self._expire(now)
        entry = opened.get(mid)
        try:
            if entry is None:
                state = MessageFrames(mid, frame.k, frame.n)
                entry = [state, now]
                if len(self._open) >= self.max_open_messages:
                    self._evict_oldest("evicted_open_limit")
                self._open[mid] = entry
            else:
                state = entry[0]
            before = state.nbytes
            is_new = state.add(frame)
        except ReassemblyError as exc:
            stats["rejected"] += 1
            log.warning("dropped frame %d of message %d: %s", frame.index, mid, exc)
            if entry is not None and not entry[0].blocks:
                self._open.pop(mid, None)
            return None
        if not is_new:
            stats["duplicates"] += 1
            return None
        entry[1] = now
        opened.move_to_end(mid)
        self._bytes += state.nbytes - before
        if self._bytes > self.max_bytes:
            self._shed_memory(mid)
            if mid not in opened:
                self._sync_gauges()
                return None
        if len(state.blocks) >= state.k:
            return self._complete(mid, state)
        stats["open_messages"] = len(opened)
        stats["open_bytes"] = self._bytes
        return None

    def received(self, message_id: int) -> frozenset[int]:
        """Indices held for ``message_id``; all 0..n-1 once it completed; empty if unknown."""
        entry = self._open.get(message_id)
        if entry is not None:
            return frozenset(entry[0].blocks)
        n = self._completed.get(message_id)
        if n is not None:
            return frozenset(range(n))
        return frozenset()

    def is_complete(self, message_id: int) -> bool:
        """True if ``message_id`` completed (and is still remembered)."""
        return message_id in self._completed

    def ack_entry(self, message_id: int) -> AckEntry | None:
        """The ACK entry for one open or remembered completed message; None if unknown."""
        entry = self._open.get(message_id)
        if entry is not None:
            state = entry[0]
            return AckEntry(message_id, state.n, frozenset(state.blocks), False)
        n = self._completed.get(message_id)
        if n is not None:
            return AckEntry(message_id, n, frozenset(range(n)), True)
        return None

    def open_messages(self) -> Iterator[int]:
        """Ids of incomplete messages, least recently active first."""
        return iter(list(self._open))

    def expire(self) -> int:
        """Drop messages idle for ``timeout_s``; returns how many. ``add`` does this too."""
        before = self.stats["evicted_timeout"]
        self._expire(self._clock())
        self._sync_gauges()
        return self.stats["evicted_timeout"] - before

    def _complete(self, mid: int, state: MessageFrames) -> bytes | None:
        stats = self.stats
        del self._open[mid]
        self._bytes -= state.nbytes
        try:
            message = state.build()
        except Exception as exc:  # zfec rejecting blocks means the frames were inconsistent
            stats["rejected"] += 1
            log.warning("could not rebuild message %d: %s", mid, exc)
            self._sync_gauges()
            return None
        if any(i not in state.blocks for i in range(state.k)):
            stats["fec_recovered"] += 1
        completed = self._completed
        completed[mid] = state.n
        if len(completed) > self.max_completed:
            completed.popitem(last=False)
        stats["completed"] += 1
        self._sync_gauges()
        return message

    def _expire(self, now: float) -> None:
        deadline = now - self.timeout_s
        opened = self._open
        while opened:
            mid, entry = next(iter(opened.items()))
            if entry[1] > deadline:
                break
            self._drop(mid, "evicted_timeout")

    def _shed_memory(self, keep: int) -> None:
        # Evict least recently active messages first; the one being added goes last.
        for mid in list(self._open):
            if self._bytes <= self.max_bytes:
                return
            if mid != keep:
                self._drop(mid, "evicted_memory")
        if self._bytes > self.max_bytes:
            self._drop(keep, "evicted_memory")

    def _evict_oldest(self, reason: str) -> None:
        mid = next(iter(self._open))
        self._drop(mid, reason)

    def _drop(self, mid: int, reason: str) -> None:
        state = self._open.pop(mid)[0]
        self._bytes -= state.nbytes
        self.stats[reason] += 1
        log.info("evicted incomplete message %d (%d of %d frames): %s", mid, len(state.blocks), state.k, reason)

    def _sync_gauges(self) -> None:
        self.stats["open_messages"] = len(self._open)
        self.stats["open_bytes"] = self._bytes
