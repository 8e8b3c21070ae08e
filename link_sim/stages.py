"""Channel stages: the impairments a frame meets on its way over the link.

A :class:`~link_sim.channel.Channel` passes every frame, as a :class:`Packet`,
through its stages in order.  Each stage's :meth:`Stage.process` returns

* the packet (possibly with a later time ``t`` or altered bytes) to go on,
* a list of packets (duplication: each goes on through the later stages), or
* a drop cause (``str``, e.g. ``"loss"``): the frame is gone.

Stages that draw random numbers get their own numpy ``Generator`` from the
channel (seeded from the channel seed and the stage's index), and draw in
blocks for speed.  A stage's draws depend only on the frames it has seen, so
the same seed and the same input give every frame the same fate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from gateway.transport.contact_plan import AlwaysUp, Availability

_BLOCK = 4096  # random numbers drawn per refill: amortizes numpy's call overhead


@dataclass(slots=True)
class Packet:
    """One frame in flight: its bytes and where in time it is."""

    seq: int  # per-channel offer number; a duplicate keeps its original's
    t_in: float  # simulation time the frame was offered
    t: float  # simulation time the frame reached the current stage
    data: bytes
    corrupted: bool = False
    duplicate: bool = False


StageResult = Packet | list[Packet] | str


class Stage:
    """Base of every stage. Subclasses override :meth:`process`."""

    def seed(self, rng: np.random.Generator) -> None:
        """Receive this stage's random generator (stages without randomness ignore it)."""

    def process(self, pkt: Packet) -> StageResult:
        """Carry ``pkt`` through this stage (see the module docstring for the result)."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Stage-specific counters merged into the channel's counters."""
        return {}


class _Uniforms:
    """Uniform [0, 1) floats from one generator, drawn in blocks."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._i = 0

    def next(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(_BLOCK).tolist()
            self._i = 0
        u = self._buf[self._i]
        self._i += 1
        return u


class _RandomStage(Stage):
    _u: _Uniforms

    def __init__(self) -> None:
        self.seed(np.random.default_rng(0))

    def seed(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._u = _Uniforms(rng)


class AvailabilityGate(Stage):
    """Drops frames (cause ``outage``) that reach it while the link is down."""

    def __init__(self, availability: Availability) -> None:
        self.availability = availability

    def process(self, pkt: Packet) -> StageResult:
        return pkt if self.availability.is_up(pkt.t) else "outage"


class Serializer(Stage):
    """Transmits frames one at a time at ``rate_bps`` through a FIFO with tail drop.

    A frame occupies the link for ``len(frame) * 8 / rate_bps`` seconds and
    leaves this stage when its last bit is sent.  Frames wait in a queue while
    another is being sent; the queue limit (``limit_frames`` and/or
    ``limit_bytes``) counts waiting frames, not the one being sent, and a frame
    that does not fit is dropped (cause ``queue``).

    Availability (cause ``outage``): a frame offered while the link is down is
    dropped; when a window closes, the frame being sent is lost and the queue
    is flushed (the modem loses lock and discards what it holds).  The stage
    works out each frame's fate when it arrives (Lindley's recursion), so
    frames must arrive in time order.
    """

    def __init__(
        self,
        rate_bps: float,
        *,
        limit_frames: int | None = None,
        limit_bytes: int | None = None,
        availability: Availability | None = None,
    ) -> None:
        if not rate_bps > 0:
            raise ValueError(f"rate_bps must be positive, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self.limit_frames = limit_frames
        self.limit_bytes = limit_bytes
        self.availability = availability if availability is not None else AlwaysUp()
        self._always_up = isinstance(self.availability, AlwaysUp)
        self._busy_until = -math.inf
        self._last_t = -math.inf
        # (time the frame leaves the queue, its size) for frames still waiting, in FIFO order
        self._waiting: deque[tuple[float, int]] = deque()
        self._waiting_bytes = 0

    def _expire(self, t: float) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= t:
            self._waiting_bytes -= waiting.popleft()[1]

    def depth(self, t: float) -> tuple[int, int]:
        """(frames, bytes) waiting at time ``t`` (not counting the one being sent)."""
        if t >= self._last_t:
            self._expire(t)
        return len(self._waiting), self._waiting_bytes

    def process(self, pkt: Packet) -> StageResult:
        t = pkt.t
        if t < self._last_t:
            raise ValueError(f"frames must reach the serializer in time order ({t} < {self._last_t})")
        self._last_t = t
        avail = self.availability
        if not self._always_up and not avail.is_up(t):
            return "outage"
        self._expire(t)
        nbytes = len(pkt.data)
        if self.limit_frames is not None and len(self._waiting) >= self.limit_frames:
            return "queue"
        if self.limit_bytes is not None and self._waiting_bytes + nbytes > self.limit_bytes:
            return "queue"
        start = t if t > self._busy_until else self._busy_until
        if self._always_up:
            close = math.inf
        else:
            change = avail.next_change(t)
            close = math.inf if change is None else change
        if start >= close:
            # Waits until loss of signal, then is flushed with the rest of the queue.
            self._waiting.append((close, nbytes))
            self._waiting_bytes += nbytes
            return "outage"
        if start > t:
            self._waiting.append((start, nbytes))
            self._waiting_bytes += nbytes
        finish = start + nbytes * 8 / self.rate_bps
        if finish > close:
            self._busy_until = close
            return "outage"
        self._busy_until = finish
        pkt.t = finish
        return pkt


class BernoulliLoss(_RandomStage):
    """Loses each frame independently with probability ``p`` (cause ``loss``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be between 0 and 1, got {p}")
        self.p = p

    def process(self, pkt: Packet) -> StageResult:
        return "loss" if self._u.next() < self.p else pkt


class GilbertElliott(_RandomStage):
    """Burst loss from a two-state Markov chain stepped once per frame (cause ``burst``).

    In the good state a frame is lost with probability ``loss_good``, in the
    bad state with ``loss_bad``; after each frame the chain moves good->bad
    with probability ``p`` and bad->good with probability ``r``.  The chain
    starts in its stationary distribution, so the loss rate is
    ``average_loss`` from the first frame on.
    """

    def __init__(self, p: float, r: float, loss_good: float = 0.0, loss_bad: float = 1.0) -> None:
        super().__init__()
        for name, v in (("p", p), ("r", r), ("loss_good", loss_good), ("loss_bad", loss_bad)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        if p + r <= 0:
            raise ValueError("p and r cannot both be 0")
        self.p, self.r, self.loss_good, self.loss_bad = p, r, loss_good, loss_bad
        self._bad: bool | None = None  # drawn from the stationary distribution on the first frame

    @property
    def bad_fraction(self) -> float:
        """Stationary probability of the bad state, p / (p + r)."""
        return self.p / (self.p + self.r)

    @property
    def average_loss(self) -> float:
        """Long-run share of frames lost."""
        pb = self.bad_fraction
        return pb * self.loss_bad + (1 - pb) * self.loss_good

    @property
    def mean_burst_frames(self) -> float:
        """Mean stay in the bad state, in frames (1 / r)."""
        return math.inf if self.r == 0 else 1.0 / self.r

    def process(self, pkt: Packet) -> StageResult:
        u = self._u
        if self._bad is None:
            self._bad = u.next() < self.bad_fraction
        bad = self._bad
        lost = u.next() < (self.loss_bad if bad else self.loss_good)
        self._bad = (u.next() >= self.r) if bad else (u.next() < self.p)
        return "burst" if lost else pkt


class BitErrors(_RandomStage):
    """Flips bits at bit error rate ``ber``: a binomial count per frame, at uniform distinct positions.

    The frame still goes on (marked ``corrupted``); catching it is the CRC's job.
    """

    def __init__(self, ber: float) -> None:
        super().__init__()
        if not 0.0 <= ber <= 1.0:
            raise ValueError(f"ber must be between 0 and 1, got {ber}")
        self.ber = ber
        self.frames_corrupted = 0
        self.bits_flipped = 0

    def seed(self, rng: np.random.Generator) -> None:
        super().seed(rng)
        self._counts: list[int] = []
        self._ci = 0
        self._nbits = -1

    def _flip_count(self, nbits: int) -> int:
        if nbits != self._nbits or self._ci >= len(self._counts):
            # Frames are all the same size in practice, so counts can be drawn in blocks.
            self._counts = self._rng.binomial(nbits, self.ber, _BLOCK).tolist()
            self._nbits, self._ci = nbits, 0
        k = self._counts[self._ci]
        self._ci += 1
        return k

    def process(self, pkt: Packet) -> StageResult:
        nbits = len(pkt.data) * 8
        if nbits == 0:
            return pkt
        k = self._flip_count(nbits)
        if k:
            buf = bytearray(pkt.data)
            for pos in self._rng.choice(nbits, size=k, replace=False).tolist():
                buf[pos >> 3] ^= 0x80 >> (pos & 7)
            pkt.data = bytes(buf)
            pkt.corrupted = True
            self.frames_corrupted += 1
            self.bits_flipped += k
        return pkt

    def counters(self) -> dict[str, int]:
        return {"corrupted": self.frames_corrupted, "bits_flipped": self.bits_flipped}


class Duplicator(_RandomStage):
    """Sends a second copy of a frame with probability ``p``; both go on through later stages."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be between 0 and 1, got {p}")
        self.p = p
        self.duplicated = 0

    def process(self, pkt: Packet) -> StageResult:
        if self._u.next() >= self.p:
            return pkt
        self.duplicated += 1
        copy = Packet(pkt.seq, pkt.t_in, pkt.t, pkt.data, pkt.corrupted, True)
        return [pkt, copy]

    def counters(self) -> dict[str, int]:
        return {"duplicated": self.duplicated}


class Delay(_RandomStage):
    """Adds a fixed propagation delay plus a per-frame jitter, uniform in [0, ``jitter_s``].

    Jitter larger than the spacing between frames reorders them.
    """

    def __init__(self, propagation_s: float, jitter_s: float = 0.0) -> None:
        super().__init__()
        if not (propagation_s >= 0 and jitter_s >= 0):
            raise ValueError(f"delays must be >= 0, got {propagation_s}, {jitter_s}")
        self.propagation_s = propagation_s
        self.jitter_s = jitter_s

    def process(self, pkt: Packet) -> StageResult:
        extra = self.propagation_s
        if self.jitter_s:
            extra += self.jitter_s * self._u.next()
        pkt.t += extra
        return pkt
