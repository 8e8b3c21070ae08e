"""Selective-repeat ARQ for the sender: which frame goes next, and what an ACK changed (pure logic).

Every method takes ``now`` (wall-clock seconds) explicitly so the logic is
unit-testable and deterministic; the sender daemon glues it to sockets and
the spool. :class:`TransmitScheduler` picks the next frame: messages by
priority (higher first) then age; within a message its META frame first,
then frames known lost (a later-sent frame of the same message was
acknowledged, or the retransmit timeout passed), then frames never sent. ACK
bitmaps mark frames acknowledged; what the ground says became of a message
(:class:`packetizer.ack.AckStatus`) decides the rest: DONE and FAILED retire
it (the daemon records which), HELD means the ground has every frame it
needs but has not written the picture yet, so nothing is sent but a *probe*
now and then (the META frame again, answered with the message's current
status), at growing intervals up to the RTO's ceiling, until DONE or FAILED
comes back. A RECEIVING ACK for a held message (the ground lost it) sends it
again.

With ``preview_first`` the order is round robin by frame index instead, so a
short pass leaves something of every queued message on the ground (a
prefix of data frames decodes to a preview): every message's data frame 0,
then the META frames, then every data frame 1, ... then the parity frames
in the same way (parity is useless to a prefix). A frame known lost takes
its index's place again before that index's new frames; priority and age
break ties among messages.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable

from gateway.protocol.rto import RtoEstimator
from packetizer.ack import AckStatus

META_INDEX = -1  #: pseudo-index of a message's META frame in this module
#: First probe of a held message after this many RTOs; then twice as long each time, up to the RTO ceiling.
#: The ground sends DONE by itself (and repeats it), so a probe is the fallback for a DONE lost several times.
PROBE_RTOS = 16


@dataclass
class _FrameState:
    sent_at: float | None = None
    seq: int = -1
    tx: int = 0
    acked: bool = False
    lost: bool = False  # known lost, waiting for its retransmission


@dataclass
class _Message:
    mid: int
    priority: int
    created: float
    n: int
    k: int
    frames: list[_FrameState]
    meta: _FrameState | None
    sent: int = 0
    retransmitted: int = 0
    max_acked_seq: int = -1
    held: bool = False  # the ground has what it needs; only probes go out
    probe_due: float = 0.0
    probes: int = 0

    @property
    def key(self) -> tuple:
        return (-self.priority, self.created, self.mid)

    def acked_count(self) -> int:
        return sum(1 for f in self.frames if f.acked)


def _rank(index: int, k: int, retransmission: bool) -> tuple[int, int, int]:
    """Where a frame goes in the ``preview_first`` round robin: (data 0 / parity 1, position, lost 0 / new 1)."""
    if index < k:
        return (0, index, 0 if retransmission else 1)
    return (1, index - k, 0 if retransmission else 1)


_FIRST_RANK = _rank(0, 1, True)
#: A message's META frame goes after every message's data frame 0 and before any data frame 1: the first
#: frames make the previews, the META only names them.
_META_RANK = (0, 0, 2)


@dataclass(frozen=True)
class Send:
    """One frame to send: ``index`` is a frame index or :data:`META_INDEX`."""

    message_id: int
    index: int
    retransmission: bool


@dataclass
class AckOutcome:
    """What one ACK entry changed."""

    newly_acked: list[int] = field(default_factory=list)
    unacked: list[int] = field(default_factory=list)  # frames the receiver no longer reports (it lost them)
    complete: bool = False  # DONE: delivered
    failed: str | None = None  # FAILED: the ground's reason
    held: bool = False  # newly HELD
    released: bool = False  # was held; the ground is receiving it again (it lost what it held)
    ignored: bool = False


class TransmitScheduler:
    """Chooses frames to (re)send and digests ACK bitmaps. All times are wall seconds."""

    def __init__(
        self,
        rto: RtoEstimator,
        *,
        reorder_frames: int = 3,
        max_transmissions: int = 50,
        max_backoff: int = 8,
        preview_first: bool = False,
    ) -> None:
        self.rto = rto
        self.preview_first = preview_first
        self.reorder = reorder_frames
        self.max_tx = max_transmissions
        self.max_backoff = max_backoff
        self._msgs: dict[int, _Message] = {}
        self._order: list[tuple] = []
        self._seq = 0
        self.frames_sent = 0
        self.retransmissions = 0

    # --- membership -------------------------------------------------------------------------

    def add(
        self,
        message_id: int,
        *,
        priority: int,
        created: float,
        n: int,
        acked: Iterable[int] = (),
        has_meta: bool = True,
        k: int | None = None,
    ) -> None:
        """Queue a message with ``n`` frames (indices 0..n-1, ``k`` of them needed), some maybe acknowledged."""
        if message_id in self._msgs:
            return
        frames = [_FrameState() for _ in range(n)]
        for i in acked:
            if 0 <= i < n:
                frames[i].acked = True
        k = n if k is None else k
        m = _Message(message_id, priority, created, n, k, frames, _FrameState() if has_meta else None)
        self._msgs[message_id] = m
        bisect.insort(self._order, m.key)

    def remove(self, message_id: int) -> None:
        """Forget a message (delivered, failed or expired)."""
        m = self._msgs.pop(message_id, None)
        if m is not None:
            i = bisect.bisect_left(self._order, m.key)
            if i < len(self._order) and self._order[i] == m.key:
                del self._order[i]

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._msgs

    def __len__(self) -> int:
        return len(self._msgs)

    def message_ids(self) -> list[int]:
        """Queued message ids in transmit order."""
        return [k[2] for k in self._order]

    def progress(self, message_id: int) -> dict[str, int]:
        """Frames acked / total, frames sent, retransmissions, probes of one message."""
        m = self._msgs[message_id]
        return {"acked": m.acked_count(), "n": m.n, "sent": m.sent, "retransmitted": m.retransmitted,
                "probes": m.probes}

    def hold(self, message_id: int, now: float) -> None:
        """Treat ``message_id`` as held by the ground: send nothing but probes, the first one soon."""
        m = self._msgs.get(message_id)
        if m is None:
            return
        for f in m.frames:
            f.acked, f.lost = True, False
        if m.meta is not None:
            m.meta.acked, m.meta.lost = True, False
        if not m.held:
            m.held, m.probes = True, 0
        m.probe_due = now + self._probe_interval(m)

    def rebase_probes(self, now: float) -> None:
        """Bring every held message's next probe within one probe interval of ``now`` under the current RTO.

        Called when the RTO changes scale (the link's time scale or rates become known): a message
        held before then (resumed from the spool at start) had its first probe timed with the
        unscaled guess, which on a time-scaled link is minutes of wall time.
        """
        for m in self._msgs.values():
            if m.held:
                m.probe_due = min(m.probe_due, now + self._probe_interval(m))

    def is_held(self, message_id: int) -> bool:
        """Whether ``message_id`` is held by the ground (only probes go out)."""
        m = self._msgs.get(message_id)
        return m is not None and m.held

    def _probe_interval(self, m: _Message) -> float:
        return min(self.rto.max, self.rto.rto * PROBE_RTOS * 2 ** min(m.probes, 16))

    def _probe_index(self, m: _Message) -> int:
        return META_INDEX if m.meta is not None else 0

    # --- choosing ---------------------------------------------------------------------------

    def _timeout(self, f: _FrameState) -> float:
        return self.rto.rto * min(2 ** max(0, f.tx - 1), self.max_backoff)

    def _expired(self, f: _FrameState, now: float) -> bool:
        return f.sent_at is not None and now - f.sent_at >= self._timeout(f)

    def next(self, now: float) -> Send | None:
        """The frame to send at ``now``, or None if every queued frame is acked or in flight.

        Probes of held messages go last: only when no message has a frame to send.
        """
        if self.preview_first:
            return self._next_round_robin(now)
        probe: Send | None = None
        for key in self._order:
            m = self._msgs[key[2]]
            if m.held:
                probe = probe or self._due_probe(m, now)
                continue
            if m.meta is not None and not m.meta.acked:
                if m.meta.tx == 0:
                    return Send(m.mid, META_INDEX, False)
            lost_pick: int | None = None
            new_pick: int | None = None
            for i, f in enumerate(m.frames):
                if f.acked:
                    continue
                if f.tx == 0:
                    if new_pick is None:
                        new_pick = i
                    continue
                if f.lost or self._expired(f, now):
                    f.lost = True
                    lost_pick = i
                    break
            if lost_pick is not None:
                return Send(m.mid, lost_pick, True)
            if new_pick is not None:
                return Send(m.mid, new_pick, False)
            # META is repeated only when the receiver evidently lacks it: it reports enough frames but not
            # complete (``lost``), or every frame is acked and the META's own timeout passed.
            if m.meta is not None and not m.meta.acked and (
                m.meta.lost or (self._expired(m.meta, now) and all(f.acked for f in m.frames))
            ):
                return Send(m.mid, META_INDEX, True)
        return probe

    def _due_probe(self, m: _Message, now: float) -> Send | None:
        """The probe of held message ``m`` if one is due at ``now``."""
        return Send(m.mid, self._probe_index(m), True) if now >= m.probe_due else None

    def _next_round_robin(self, now: float) -> Send | None:
        """:meth:`next` under ``preview_first``: the sendable frame of lowest :func:`_rank` over all messages."""
        best: tuple[tuple[int, int, int], Send] | None = None
        probe: Send | None = None
        for key in self._order:
            m = self._msgs[key[2]]
            if m.held:
                probe = probe or self._due_probe(m, now)
                continue
            pick = self._lowest_sendable(m, now)
            if pick is not None and (best is None or pick[0] < best[0]):
                best = pick
                if pick[0] == _FIRST_RANK:
                    break  # nothing can go before a first frame that was lost
        return best[1] if best is not None else probe

    def _lowest_sendable(self, m: _Message, now: float) -> tuple[tuple[int, int, int], Send] | None:
        """The frame of ``m`` that may go now with the lowest rank (frames in flight wait for their timeout)."""
        meta = m.meta
        meta_pick: tuple[tuple[int, int, int], Send] | None = None
        if meta is not None and not meta.acked:
            if meta.tx == 0:
                meta_pick = (_META_RANK, Send(m.mid, META_INDEX, False))
            elif meta.lost or (self._expired(meta, now) and all(f.acked for f in m.frames)):
                meta_pick = (_META_RANK, Send(m.mid, META_INDEX, True))
        for i, f in enumerate(m.frames):
            if f.acked:
                continue
            if f.tx > 0 and not (f.lost or self._expired(f, now)):
                continue  # in flight
            again = f.tx > 0
            if again:
                f.lost = True
            rank = _rank(i, m.k, again)
            if meta_pick is not None and meta_pick[0] < rank:
                return meta_pick
            return rank, Send(m.mid, i, again)
        return meta_pick

    def next_deadline(self, now: float) -> float | None:
        """Earliest wall time at which a retransmit timeout fires (for the event loop's sleep)."""
        best: float | None = None
        for m in self._msgs.values():
            if m.held:
                best = m.probe_due if best is None else min(best, m.probe_due)
                continue
            states = list(m.frames)
            if m.meta is not None and not m.meta.acked and all(f.acked for f in m.frames):
                states.append(m.meta)
            for f in states:
                if f.acked:
                    continue
                if f.tx == 0 or f.lost:
                    return now
                t = f.sent_at + self._timeout(f)  # type: ignore[operator]
                best = t if best is None else min(best, t)
        return best

    def sent(self, message_id: int, index: int, now: float) -> None:
        """Record that a frame went out at ``now`` (limits are checked by :meth:`over_limit`)."""
        m = self._msgs.get(message_id)
        if m is None:
            return
        if m.held:  # a probe: counted, and the next one later
            m.probes += 1
            m.probe_due = now + self._probe_interval(m)
            m.sent += 1
            self.frames_sent += 1
            return
        f = m.meta if index == META_INDEX else m.frames[index]
        if f is None:
            return
        if f.tx > 0:
            m.retransmitted += 1
            self.retransmissions += 1
        f.tx += 1
        f.sent_at = now
        f.lost = False
        f.seq = self._seq
        self._seq += 1
        m.sent += 1
        self.frames_sent += 1

    def over_limit(self, now: float) -> list[tuple[int, str]]:
        """Messages with a frame sent ``max_transmissions`` times whose last try also timed out."""
        out = []
        for m in self._msgs.values():
            if m.held:
                continue
            for i, f in enumerate(m.frames):
                if not f.acked and f.tx >= self.max_tx and (f.lost or self._expired(f, now)):
                    out.append((m.mid, f"frame {i} was sent {f.tx} times without being acknowledged"))
                    break
        return out

    # --- acknowledgements -------------------------------------------------------------------

    def on_ack(
        self,
        message_id: int,
        n: int,
        received: frozenset[int],
        status: AckStatus,
        now: float,
        reason: str | None = None,
    ) -> AckOutcome:
        """Digest one ACK entry: the message's status, frames acked, holes, an RTT sample."""
        out = AckOutcome()
        m = self._msgs.get(message_id)
        if m is None or n != m.n:
            out.ignored = True  # not about the message we sent: foreign or stale
            return out
        if status in (AckStatus.DONE, AckStatus.FAILED, AckStatus.HELD):
            out.newly_acked = [i for i, f in enumerate(m.frames) if not f.acked]
            if status == AckStatus.DONE:
                out.complete = True
            elif status == AckStatus.FAILED:
                out.failed = reason or "the ground station gave no reason"
            elif not m.held:
                out.held = True
            if not m.held or status != AckStatus.HELD:
                self.hold(message_id, now)  # nothing to send any more (but probes until it is recorded)
            return out
        if any(not 0 <= i < m.n for i in received):
            out.ignored = True
            return out
        if m.held:
            m.held = False  # the ground is receiving it again: it lost what it held, META included
            out.released = True
            if m.meta is not None:
                m.meta.acked, m.meta.tx, m.meta.sent_at = False, 0, None
        for i, f in enumerate(m.frames):
            if i in received:
                if not f.acked:
                    f.acked = True
                    f.lost = False
                    out.newly_acked.append(i)
                    if f.tx == 1 and f.sent_at is not None:
                        self.rto.sample(now - f.sent_at)
                    m.max_acked_seq = max(m.max_acked_seq, f.seq)
            elif f.acked:
                # The receiver lost what it had acknowledged (store wiped or evicted): send again.
                f.acked = False
                f.tx = 0
                f.sent_at = None
                out.unacked.append(i)
        # Selective repeat: a hole older than acknowledged frames of the same message is lost.
        for f in m.frames:
            if not f.acked and f.tx > 0 and f.seq + self.reorder < m.max_acked_seq:
                f.lost = True
        # The receiver holds enough frames yet does not say complete: it waits for the META frame.
        meta = m.meta
        if meta is not None and meta.tx > 0 and len(received) >= m.k and meta.seq < m.max_acked_seq:
            meta.lost = True
        return out
