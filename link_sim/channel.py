"""A channel: one direction of the link, as a pipeline of stages.

The channel is a pure discrete-event model: it never reads a clock.  The
caller offers frames with the simulation time they enter the link
(:meth:`Channel.offer`, times must not go backwards) and collects the frames
due by some time (:meth:`Channel.poll`), in delivery-time order.  A frame's
fate is decided when it is offered; the pending deliveries wait in a heap.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from link_sim.stages import Packet, Serializer, Stage

DROP_CAUSES = ("loss", "burst", "queue", "outage", "no_peer", "peer_busy")

DropHook = Callable[[Packet, str], None]


class Delivery(NamedTuple):
    """A frame leaving the channel."""

    t_out: float
    data: bytes
    seq: int
    t_in: float
    corrupted: bool
    duplicate: bool


def _seed_entropy(seed: int | Sequence[int]) -> list[int]:
    return [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]


class Channel:
    """Frames go in with :meth:`offer`, come out with :meth:`poll`, fates counted in :attr:`counters`.

    ``seed`` (an int or a sequence of ints) seeds every stage: stage ``i``
    gets ``numpy.random.default_rng([*seed, i])``.  ``on_drop`` is called
    with the packet and cause of every dropped frame (for traces).

    :attr:`counters` keeps ``in``, ``bytes_in``, ``delivered``,
    ``bytes_delivered``, ``dropped`` (by cause), ``corrupted``,
    ``bits_flipped``, ``duplicated``, ``queue_depth`` (frames waiting in the
    serializer as of the last offer or poll), ``queue_bytes`` and
    ``in_flight``.  ``corrupted``, ``bits_flipped`` and ``duplicated`` are
    brought up to date by :meth:`poll` and :meth:`snapshot`.  Always ``in + duplicated == delivered + sum(dropped) +
    in_flight``.
    """

    def __init__(
        self,
        stages: Iterable[Stage],
        *,
        seed: int | Sequence[int] = 0,
        on_drop: DropHook | None = None,
    ) -> None:
        self.stages: list[Stage] = list(stages)
        entropy = _seed_entropy(seed)
        for i, stage in enumerate(self.stages):
            stage.seed(np.random.default_rng([*entropy, i]))
        self.on_drop = on_drop
        self._serializers = [s for s in self.stages if isinstance(s, Serializer)]
        self._counting = [s for s in self.stages if type(s).counters is not Stage.counters]
        self._heap: list[tuple[float, int, Packet]] = []
        self._order = 0  # tie-break so equal delivery times keep offer order
        self._seq = 0
        self._last_t = float("-inf")
        self.counters: dict = {
            "in": 0,
            "bytes_in": 0,
            "delivered": 0,
            "bytes_delivered": 0,
            "dropped": {cause: 0 for cause in DROP_CAUSES},
            "corrupted": 0,
            "bits_flipped": 0,
            "duplicated": 0,
            "queue_depth": 0,
            "queue_bytes": 0,
            "in_flight": 0,
        }

    def offer(self, frame: bytes, t: float) -> None:
        """Put ``frame`` on the link at simulation time ``t`` (not earlier than the last offer)."""
        if t < self._last_t:
            raise ValueError(f"offer times must not go backwards ({t} < {self._last_t})")
        self._last_t = t
        c = self.counters
        c["in"] += 1
        c["bytes_in"] += len(frame)
        pkt = Packet(self._seq, t, t, frame if frame.__class__ is bytes else bytes(frame))
        self._seq += 1
        self._run(pkt, 0)
        c["in_flight"] = len(self._heap)
        if self._serializers:
            self._update_queue(t)

    def _run(self, pkt: Packet, first: int) -> None:
        stages = self.stages
        for i in range(first, len(stages)):
            out = stages[i].process(pkt)
            if out.__class__ is Packet:
                pkt = out  # type: ignore[assignment]
                continue
            if isinstance(out, str):
                self.counters["dropped"][out] = self.counters["dropped"].get(out, 0) + 1
                if self.on_drop is not None:
                    self.on_drop(pkt, out)
                return
            for p in out:  # several packets (duplication): each goes on alone
                self._run(p, i + 1)
            return
        heapq.heappush(self._heap, (pkt.t, self._order, pkt))
        self._order += 1

    def poll_deliveries(self, t: float) -> list[Delivery]:
        """Every frame due by ``t`` (delivery time <= ``t``), earliest first, with its details."""
        heap = self._heap
        out: list[Delivery] = []
        c = self.counters
        while heap and heap[0][0] <= t:
            t_out, _, p = heapq.heappop(heap)
            out.append(Delivery(t_out, p.data, p.seq, p.t_in, p.corrupted, p.duplicate))
            c["bytes_delivered"] += len(p.data)
        c["delivered"] += len(out)
        c["in_flight"] = len(heap)
        if t >= self._last_t:
            self._update_queue(t)
        self._update_stage_counters()
        return out

    def poll(self, t: float) -> list[tuple[float, bytes]]:
        """Every frame due by ``t`` as ``(delivery_time, frame)``, earliest first."""
        return [(d.t_out, d.data) for d in self.poll_deliveries(t)]

    def next_due(self) -> float | None:
        """Delivery time of the earliest pending frame, or None if none is in flight."""
        return self._heap[0][0] if self._heap else None

    def record_undelivered(self, nbytes: int, cause: str = "no_peer") -> None:
        """Re-count one delivered frame of ``nbytes`` as dropped for ``cause`` (the daemon had nowhere to send it)."""
        c = self.counters
        c["delivered"] -= 1
        c["bytes_delivered"] -= nbytes
        c["dropped"][cause] = c["dropped"].get(cause, 0) + 1

    def _update_queue(self, t: float) -> None:
        frames = nbytes = 0
        for s in self._serializers:
            f, b = s.depth(t)
            frames += f
            nbytes += b
        self.counters["queue_depth"], self.counters["queue_bytes"] = frames, nbytes

    def _update_stage_counters(self) -> None:
        # Stage counters (corrupted, duplicated...) are copied in on poll and snapshot, not per frame.
        if self._counting:
            totals: dict[str, int] = {}
            for s in self._counting:
                for k, v in s.counters().items():
                    totals[k] = totals.get(k, 0) + v
            self.counters.update(totals)

    def snapshot(self) -> dict:
        """A copy of :attr:`counters` safe to hand out (msgpack, JSON)."""
        self._update_stage_counters()
        c = dict(self.counters)
        c["dropped"] = dict(c["dropped"])
        return c
