"""Link presets: YAML files that say how the simulated link behaves.

:func:`load_link_config` reads and validates one file into a
:class:`LinkConfig`.  Unknown keys and bad values raise
:class:`~link_sim.errors.ConfigError` whose message starts with the key path,
e.g. ``forward.gilbert_elliott.p: must be between 0 and 1, got 1.5``.
The layout is documented in ``docs/link_sim.md``; the shipped presets live in
``configs/links/``.

Gilbert-Elliott bursts can be given as transition probabilities ``p``
(good->bad) and ``r`` (bad->good), or as ``mean_burst_frames`` (mean stay in
the bad state, ``1/r``) and ``average_loss``; the second form is converted with
``r = 1/mean_burst_frames`` and ``p = r * b / (1 - b)`` where
``b = (average_loss - loss_good) / (loss_bad - loss_good)`` is the share of
time spent in the bad state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.transport.config_reader import Section, read_yaml, show
from gateway.transport.contact_plan import AlwaysUp, Availability, parse_availability
from gateway.transport.curve import CurveKeys, load_key
from gateway.transport.http_listen import MetricsSettings, read_metrics_section
from link_sim.errors import ConfigError
from link_sim.presets import link_preset

DEFAULT_FRAME_SIZE = 450
DEFAULT_QUEUE_FRAMES = 1000
DEFAULT_ENDPOINTS = ("tcp://127.0.0.1:5551", "tcp://127.0.0.1:5552", "tcp://127.0.0.1:5553")


@dataclass(frozen=True)
class QueueConfig:
    """Transmit queue limit: waiting frames and/or waiting bytes (None = no limit of that kind)."""

    frames: int | None = DEFAULT_QUEUE_FRAMES
    bytes: int | None = None


@dataclass(frozen=True)
class DelayConfig:
    """One-way propagation delay plus uniform jitter in [0, jitter_s], in seconds."""

    propagation_s: float = 0.0
    jitter_s: float = 0.0


@dataclass(frozen=True)
class GilbertElliottConfig:
    """Two-state burst loss (see :class:`link_sim.stages.GilbertElliott`)."""

    p: float
    r: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @property
    def average_loss(self) -> float:
        """Long-run share of frames lost."""
        b = self.p / (self.p + self.r)
        return b * self.loss_bad + (1 - b) * self.loss_good

    @property
    def mean_burst_frames(self) -> float:
        """Mean stay in the bad state, in frames."""
        return math.inf if self.r == 0 else 1.0 / self.r


@dataclass(frozen=True)
class ChannelConfig:
    """One direction of the link (``forward``: sender to ground, ``ret``: acks back)."""

    rate_bps: float
    frame_size: int = DEFAULT_FRAME_SIZE
    queue: QueueConfig = field(default_factory=QueueConfig)
    delay: DelayConfig = field(default_factory=DelayConfig)
    loss: float = 0.0  # independent (Bernoulli) loss probability per frame
    gilbert_elliott: GilbertElliottConfig | None = None
    ber: float = 0.0  # bit error rate
    duplicate: float = 0.0  # probability a frame arrives twice

    @property
    def frame_time_s(self) -> float:
        """Seconds one frame occupies the link."""
        return self.frame_size * 8 / self.rate_bps


@dataclass(frozen=True)
class Endpoints:
    """Where the link daemon binds (a port of ``*`` lets the OS pick one)."""

    sender_side: str = DEFAULT_ENDPOINTS[0]
    ground_side: str = DEFAULT_ENDPOINTS[1]
    control: str = DEFAULT_ENDPOINTS[2]


@dataclass(frozen=True)
class LinkConfig:
    """A whole link preset."""

    forward: ChannelConfig
    ret: ChannelConfig
    availability: Availability = field(default_factory=AlwaysUp)
    time_scale: float = 1.0  # simulated seconds per wall-clock second
    seed: int = 0
    endpoints: Endpoints = field(default_factory=Endpoints)
    curve: CurveKeys | None = None  # the daemon's server keys; None = plain TCP
    stats_interval_s: float = 10.0  # wall seconds between stats log lines
    metrics: MetricsSettings = field(default_factory=MetricsSettings)  # where /metrics is served (off by default)
    name: str = ""
    description: str = ""
    auth_key_file: str | None = None  # the frame key: a side is taken only by a hello signed with it

    @property
    def frame_size(self) -> int:
        """Frame size of the forward link (the one images travel on)."""
        return self.forward.frame_size


def _gilbert_elliott(s: Section) -> GilbertElliottConfig:
    loss_good = s.probability("loss_good", 0.0)
    loss_bad = s.probability("loss_bad", 1.0)
    direct = s.has("p") or s.has("r")
    derived = s.has("mean_burst_frames") or s.has("average_loss")
    if direct and derived:
        s.fail(s.path, "give either p and r, or mean_burst_frames and average_loss, not both")
    if not direct and not derived:
        s.fail(s.path, "needs p and r, or mean_burst_frames and average_loss")
    if loss_bad <= loss_good:
        s.fail(s.key_path("loss_bad"), f"must be greater than loss_good ({loss_good:g}), got {loss_bad:g}")
    if direct:
        p = s.probability("p", required=True)
        r = s.probability("r", required=True)
        if p + r == 0:
            s.fail(s.key_path("r"), "p and r cannot both be 0 (the chain would never move)")
        s.done()
        return GilbertElliottConfig(p, r, loss_good, loss_bad)
    burst = s.number("mean_burst_frames", None, lo=1.0, hi=1e9, required=True)
    avg = s.number("average_loss", None, lo=loss_good, hi=loss_bad, required=True)
    assert burst is not None and avg is not None
    s.done()
    r = 1.0 / burst
    bad_share = (avg - loss_good) / (loss_bad - loss_good)
    if bad_share >= 1.0:
        s.fail(s.key_path("average_loss"), f"must be below loss_bad ({loss_bad:g}) so the chain can leave the bad state")
    p = r * bad_share / (1.0 - bad_share)
    if p > 1.0:
        s.fail(
            s.key_path("mean_burst_frames"),
            f"too short for average_loss {avg:g}: it needs p = {p:.3g} > 1; use longer bursts or less loss",
        )
    return GilbertElliottConfig(p, r, loss_good, loss_bad)


def _channel(s: Section, frame_size: int) -> ChannelConfig:
    rate = s.number("rate_bps", None, lo=0.0, hi=1e12, lo_open=True, required=True)
    fs = s.integer("frame_size", frame_size, lo=1, hi=65536)
    q = s.section("queue")
    q_frames = q.integer("frames", None, lo=1, hi=10_000_000)
    q_bytes = q.integer("bytes", None, lo=1, hi=1 << 32)
    q.done()
    if q_frames is None and q_bytes is None:
        q_frames = DEFAULT_QUEUE_FRAMES  # the daemon never runs with an unbounded queue
    d = s.section("delay")
    delay = DelayConfig(
        d.number("propagation_s", 0.0, lo=0.0, hi=3600.0) or 0.0,
        d.number("jitter_s", 0.0, lo=0.0, hi=3600.0) or 0.0,
    )
    d.done()
    loss_s = s.section("loss")
    loss = loss_s.probability("p")
    loss_s.done()
    ge = _gilbert_elliott(s.section("gilbert_elliott")) if s.has("gilbert_elliott") else None
    s.raw("gilbert_elliott")
    be = s.section("bit_errors")
    ber = be.probability("ber")
    be.done()
    dup_s = s.section("duplicate")
    dup = dup_s.probability("p")
    dup_s.done()
    s.done()
    assert rate is not None and fs is not None
    return ChannelConfig(rate, fs, QueueConfig(q_frames, q_bytes), delay, loss, ge, ber, dup)


def _curve(s: Section, base: Path) -> CurveKeys:
    def key(path_key: str, raw: Any) -> bytes:
        if not isinstance(raw, str):
            s.fail(path_key, f"must be a key file path, got {show(raw)}")
        p = Path(raw) if Path(raw).is_absolute() else base / raw
        try:
            return load_key(p)
        except (OSError, ValueError) as e:
            s.fail(path_key, f"cannot read CURVE key {p}: {e}; make keys with 'satgw keys'")
        raise AssertionError("unreachable")

    public = key(s.key_path("public_key"), s.raw("public_key"))
    secret = key(s.key_path("secret_key"), s.raw("secret_key"))
    clients = s.raw("allowed_clients") or []
    if not isinstance(clients, list):
        s.fail(s.key_path("allowed_clients"), "must be a list of client public key files")
    allowed = tuple(key(f"{s.key_path('allowed_clients')}[{i}]", c) for i, c in enumerate(clients))
    s.done()
    return CurveKeys(public=public, secret=secret, allowed_clients=allowed)


def parse_link_config(data: Any, source: str = "<config>", base_dir: str | os.PathLike = ".") -> LinkConfig:
    """Validate an already-parsed YAML document into a :class:`LinkConfig`.

    ``source`` names the document in error messages; relative key file paths
    are resolved against ``base_dir``.
    """
    top = Section(data, "", source, error=ConfigError)
    frame_size = top.integer("frame_size", DEFAULT_FRAME_SIZE, lo=1, hi=65536)
    assert frame_size is not None
    if not top.has("forward"):
        top.fail("forward", "is required (the sender-to-ground channel)")
    if not top.has("return"):
        top.fail("return", "is required (the ground-to-sender channel for acks)")
    forward = _channel(top.section("forward"), frame_size)
    ret = _channel(top.section("return"), frame_size)
    availability = parse_availability(top.section("availability"), base_dir)
    time_scale = top.number("time_scale", 1.0, lo=0.0, hi=1e6, lo_open=True)
    seed = top.integer("seed", 0, lo=0, hi=2**63 - 1)
    e = top.section("endpoints")
    endpoints = Endpoints(
        e.endpoint("sender_side", DEFAULT_ENDPOINTS[0]) or DEFAULT_ENDPOINTS[0],
        e.endpoint("ground_side", DEFAULT_ENDPOINTS[1]) or DEFAULT_ENDPOINTS[1],
        e.endpoint("control", DEFAULT_ENDPOINTS[2]) or DEFAULT_ENDPOINTS[2],
    )
    e.done()
    curve = _curve(top.section("curve"), Path(base_dir)) if top.has("curve") else None
    top.raw("curve")
    stats_interval = top.number("stats_interval_s", 10.0, lo=0.0, hi=86400.0, lo_open=True)
    metrics = read_metrics_section(top.section("metrics"))
    name = top.string("name", "")
    description = top.string("description", "")
    key_file = top.path_value("auth_key_file", None, "the frame key file shared with the daemons")
    if key_file is not None and not Path(key_file).is_absolute():
        key_file = str(Path(base_dir) / key_file)  # like the CURVE key files: relative to the preset
    top.done()
    assert time_scale is not None and seed is not None and stats_interval is not None
    return LinkConfig(
        forward, ret, availability, time_scale, seed, endpoints, curve, stats_interval, metrics, name, description,
        key_file,
    )


def load_link_config(path: str | os.PathLike) -> LinkConfig:
    """Read and validate a link preset: a YAML file path, or a preset name (``clean``, ``geo``, ``leo``, ``harsh``)."""
    p = link_preset(str(path))
    if not p.exists():
        raise ConfigError(f"{p}: link config not found; give a YAML file or a preset name (clean, geo, leo, harsh)")
    cfg = parse_link_config(read_yaml(p, "link config", ConfigError), source=str(p), base_dir=p.parent)
    return cfg if cfg.name else replace(cfg, name=p.stem)
