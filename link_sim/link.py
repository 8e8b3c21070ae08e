"""The whole simulated link: forward and return channels sharing one schedule and clock.

:class:`Link` builds both channels from a :class:`~link_sim.config.LinkConfig`
and answers the daemon's ``stats`` and ``schedule`` questions.  With a
:class:`~link_sim.clock.VirtualClock` it runs the link inside a test or a
simulation with no sockets at all.
"""

from __future__ import annotations

from typing import Callable, Sequence

from gateway.transport.contact_plan import Availability
from link_sim.channel import Channel, Delivery
from link_sim.clock import Clock
from link_sim.config import ChannelConfig, LinkConfig
from link_sim.stages import (
    BernoulliLoss,
    BitErrors,
    Delay,
    Duplicator,
    GilbertElliott,
    Packet,
    Serializer,
    Stage,
)

FORWARD = "forward"
RETURN = "return"
DIRECTIONS = (FORWARD, RETURN)

LinkDropHook = Callable[[str, Packet, str], None]


def build_stages(cfg: ChannelConfig, availability: Availability) -> list[Stage]:
    """The stages of one channel, in physical order.

    The transmitter's queue and serializer come first (and apply the
    availability schedule); losses, bursts, bit errors and duplication act on
    the frame in the air; propagation delay and jitter come last.
    """
    stages: list[Stage] = [
        Serializer(
            cfg.rate_bps,
            limit_frames=cfg.queue.frames,
            limit_bytes=cfg.queue.bytes,
            availability=availability,
        )
    ]
    if cfg.loss > 0:
        stages.append(BernoulliLoss(cfg.loss))
    if cfg.gilbert_elliott is not None:
        ge = cfg.gilbert_elliott
        stages.append(GilbertElliott(ge.p, ge.r, ge.loss_good, ge.loss_bad))
    if cfg.ber > 0:
        stages.append(BitErrors(cfg.ber))
    if cfg.duplicate > 0:
        stages.append(Duplicator(cfg.duplicate))
    if cfg.delay.propagation_s > 0 or cfg.delay.jitter_s > 0:
        stages.append(Delay(cfg.delay.propagation_s, cfg.delay.jitter_s))
    return stages


def build_channel(
    cfg: ChannelConfig,
    availability: Availability,
    seed: int | Sequence[int],
    on_drop: Callable[[Packet, str], None] | None = None,
) -> Channel:
    """A :class:`Channel` for ``cfg``, its stages seeded from ``seed``."""
    return Channel(build_stages(cfg, availability), seed=seed, on_drop=on_drop)


class Link:
    """Both directions of the link on one clock.

    ``seed`` overrides ``config.seed``; the forward channel is seeded with
    ``(seed, 0)`` and the return channel with ``(seed, 1)``, so the two
    directions draw independent fates.  ``on_drop(direction, packet, cause)``
    is called for every frame a channel drops.
    """

    def __init__(
        self,
        config: LinkConfig,
        clock: Clock,
        *,
        seed: int | None = None,
        on_drop: LinkDropHook | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        s = config.seed if seed is None else seed

        def hook(direction: str) -> Callable[[Packet, str], None] | None:
            if on_drop is None:
                return None
            return lambda pkt, cause: on_drop(direction, pkt, cause)

        self.channels: dict[str, Channel] = {
            FORWARD: build_channel(config.forward, config.availability, (s, 0), hook(FORWARD)),
            RETURN: build_channel(config.ret, config.availability, (s, 1), hook(RETURN)),
        }

    @property
    def forward(self) -> Channel:
        """Sender to ground."""
        return self.channels[FORWARD]

    @property
    def ret(self) -> Channel:
        """Ground to sender (acks)."""
        return self.channels[RETURN]

    def offer(self, direction: str, frame: bytes) -> None:
        """Put ``frame`` on the ``direction`` channel now."""
        self.channels[direction].offer(frame, self.clock.now())

    def poll(self) -> list[tuple[str, Delivery]]:
        """Every frame due now on either channel, as ``(direction, delivery)`` in time order."""
        t = self.clock.now()
        out = [(d, x) for d in DIRECTIONS for x in self.channels[d].poll_deliveries(t)]
        out.sort(key=lambda item: item[1].t_out)
        return out

    def next_due(self) -> float | None:
        """Simulation time of the next pending delivery on either channel, or None."""
        dues = [t for t in (c.next_due() for c in self.channels.values()) if t is not None]
        return min(dues) if dues else None

    def schedule(self) -> dict:
        """Availability now and the link's shape: the daemon's ``schedule`` reply."""
        t = self.clock.now()
        change = self.config.availability.next_change(t)
        return {
            "now": t,
            "up": self.config.availability.is_up(t),
            "next_change_in": None if change is None else change - t,
            "time_scale": self.config.time_scale,
            "forward_rate_bps": self.config.forward.rate_bps,
            "return_rate_bps": self.config.ret.rate_bps,
            "frame_size": self.config.forward.frame_size,
            "return_frame_size": self.config.ret.frame_size,
        }

    def stats(self) -> dict:
        """Counters of both channels: the daemon's ``stats`` reply."""
        t = self.clock.now()
        return {
            "now": t,
            "up": self.config.availability.is_up(t),
            FORWARD: self.forward.snapshot(),
            RETURN: self.ret.snapshot(),
        }
