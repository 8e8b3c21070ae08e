"""Configuration of the sender and ground-station daemons: YAML in, typed dataclasses out, validated at start.

Every key is read through the one config reader the link simulator also
uses (:class:`gateway.transport.config_reader.Section`) before a daemon
touches a socket or a file: unknown keys, wrong types, out-of-range values
and nulls where a value is needed raise :class:`gateway.errors.ConfigError`
naming the dotted key and the file. Durations under ``arq`` and ``ack`` are
in *link* seconds (simulated time; they are divided by the link's time scale
at run time); ``ttl_s``, ``inbox_poll_s`` and the ``decode`` durations are
wall-clock seconds. Relative paths are relative to the current directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from gateway.errors import ConfigError
from gateway.transport.config_reader import Section, read_yaml, set_dotted
from gateway.transport.http_listen import MetricsSettings, read_metrics_section
from gateway.transport.keyfile import load_frame_key

LOG_LEVELS = ("debug", "info", "warning", "error")
#: An override value that sets a key to null (a plain None override means "not given").
NULL = type("Null", (), {"__repr__": lambda self: "NULL"})()
SYNCHRONOUS = ("FULL", "NORMAL")


@dataclass(frozen=True)
class LinkSettings:
    """How a daemon reaches the link and learns its schedule."""

    endpoint: str  #: the link's side for this daemon
    control: str | None  #: the link's control endpoint; None: follow ``contact_plan``
    contact_plan: str | None  #: a contact-plan file, used only when ``control`` is None
    schedule_poll_s: float
    control_timeout_s: float


@dataclass(frozen=True)
class FrameSettings:
    """The frame format both daemons and the link agree on.

    With ``create_key``, a missing ``auth_key_file`` is generated at start
    (32 random bytes, mode 0600) so the sample configs authenticate frames out of the box.
    """

    size: int
    auth_key_file: str | None
    tag_len: int
    create_key: bool = False


@dataclass(frozen=True)
class SenderDefaults:
    """Job options for inbox images and ``satgw send`` without options."""

    codec: str
    packets: int
    priority: int
    parity: int


@dataclass(frozen=True)
class SenderAuto:
    """How a ``codec: auto`` job chooses its codec, as the config gives it.

    ``candidates``: codec names (None: cadc and every classical backend this
    host has); ``metric``: what the pick maximises; ``drop_margin``: see
    ``docs/ratecontrol.md`` (None: the metric's default).  The sender checks
    the names and the metric against its codecs at start
    (:func:`gateway.sender.auto_codecs.auto_settings`).
    """

    candidates: tuple[str, ...] | None = None
    metric: str = "ms_ssim"
    drop_margin: float | None = None


@dataclass(frozen=True)
class SenderLimits:
    """What the sender accepts."""

    max_image_bytes: int
    max_pixels: int
    max_queue: int


@dataclass(frozen=True)
class ArqSettings:
    """Selective repeat: retransmit timeouts (link seconds), limits, expiry (wall seconds), pacing credit."""

    initial_rto_s: float
    min_rto_s: float
    max_rto_s: float
    reorder_frames: int
    max_transmissions: int
    ttl_s: float
    burst_frames: int
    #: Send every queued message's first data frames before the rest of any (round robin by frame index, data
    #: before parity), so a short pass leaves a preview of everything queued on the ground.
    preview_first: bool = False


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """What both daemons' configs have: their control socket, the link, frames, CURVE, logging, the bundle, metrics."""

    control: str
    log_level: str
    bundle: str | None
    link: LinkSettings
    frame: FrameSettings
    curve_dir: str | None
    metrics: MetricsSettings = MetricsSettings()  #: where /metrics is served (off by default)
    source: str = "<defaults>"  #: the file it was read from


@dataclass(frozen=True, kw_only=True)
class SenderConfig(DaemonConfig):
    """The sender daemon's validated configuration."""

    spool: str
    inbox: str | None
    inbox_poll_s: float
    spool_synchronous: str
    defaults: SenderDefaults
    limits: SenderLimits
    arq: ArqSettings
    auto: SenderAuto = SenderAuto()  #: how ``codec: auto`` chooses
    #: CADC messages: gradient steps of encoder-side refinement of the chosen setting (0: off; the sender then
    #: loads the whole model; :mod:`gateway.codec.cadc.refine`)
    refine_steps: int = 0
    #: CADC bundles by the budget's bits per pixel, as the config gives them (``{bundle, from_bpp}`` mappings;
    #: checked and built at start by :func:`gateway.sender.auto_codecs.sender_ladder`); None: ``bundle`` alone,
    #: or the embedded models' ladder when ``bundle`` is null too
    ladder: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class AckSettings:
    """When the ground station acknowledges (link seconds)."""

    interval_s: float
    active_s: float
    meta_grace_s: float


@dataclass(frozen=True)
class DecodeSettings:
    """Where and how long decoding may run, and how a decode the host made fail is retried."""

    worker: str
    timeout_s: float
    max_attempts: int  #: decodes that crash or hang on one bitstream before it fails
    retry_initial_s: float = 1.0  #: first wait after a decode failed for a host reason (disk, memory, bundle)
    retry_max_s: float = 60.0  #: longest wait between such retries (they never give up)
    check_bundle: bool = True  #: round-trip a test picture through the CADC bundle at start; refuse a broken one


@dataclass(frozen=True)
class PreviewSettings:
    """Previews: a message whose frames stop coming is written from its intact prefix, then replaced by each
    later revision and finally by the complete picture (codecs that decode prefixes only: CADC)."""

    enabled: bool = True
    quiet_s: float = 10.0  #: link seconds without a frame of a message before it is previewed
    min_frames: int = 1  #: smallest intact prefix (data frames 0..j-1) worth a preview
    #: wall seconds before the sender's lifetime for the message (its arq.ttl_s, from the META frame) ends
    #: at which it is previewed whatever arrives
    lifetime_margin_s: float = 300.0


@dataclass(frozen=True)
class ReceiverLimits:
    """What the ground station keeps."""

    max_pending_messages: int
    max_frames_per_message: int
    max_batch_frames: int
    max_image_pixels: int = 64_000_000  #: a bitstream claiming a bigger picture fails before it is decoded


@dataclass(frozen=True, kw_only=True)
class ReceiverConfig(DaemonConfig):
    """The ground-station daemon's validated configuration."""

    store: str
    outbox: str
    store_synchronous: str
    ack: AckSettings
    decode: DecodeSettings
    limits: ReceiverLimits
    #: More CADC bundles to decode with besides ``bundle`` (e.g. the model before an update): the
    #: bitstream's model id picks one, so pictures still in flight after an update decode.
    bundles: tuple[str, ...] = ()
    device: str = "auto"  #: where CADC decodes: auto, cpu, cuda, cuda:N (checked by the ground station)
    precision: str = "auto"  #: dtype of the UNet, VAE and text models on a GPU: auto, fp16, bf16, fp32
    previews: PreviewSettings = PreviewSettings()

    @property
    def decode_bundles(self) -> tuple[str | None, ...]:
        """Every bundle the ground decodes with: ``bundle`` (None: the embedded cadc-tiny), then ``bundles``."""
        return (self.bundle, *self.bundles)


def _link(s: Section) -> LinkSettings:
    endpoint = s.endpoint("endpoint", None)
    if endpoint is None:
        s.fail(s.key_path("endpoint"), "is required: the link's side for this daemon, e.g. tcp://127.0.0.1:5551")
    link = LinkSettings(
        endpoint=endpoint or "",
        control=s.endpoint("control", None),
        contact_plan=s.path_value("contact_plan", None, "a contact-plan file"),
        schedule_poll_s=_num(s, "schedule_poll_s", 0.5, 0.01, 60),
        control_timeout_s=_num(s, "control_timeout_s", 0.5, 0.01, 30),
    )
    if link.control is None and link.contact_plan is None:
        s.fail(
            s.key_path("control"),
            "is null and link.contact_plan is not set: give the link's control endpoint (preferred) or a "
            "contact plan so the daemon knows the link's rates and outages",
        )
    s.done()
    return link


def _frame(s: Section) -> FrameSettings:
    frame = FrameSettings(
        size=_int(s, "size", 450, 64, 9000),
        auth_key_file=s.path_value("auth_key_file", None, "a pre-shared HMAC key file"),
        tag_len=_int(s, "tag_len", 8, 4, 32),
        create_key=s.boolean("create_key", False),
    )
    s.done()
    return frame


def _curve_dir(s: Section) -> str | None:
    d = s.path_value("dir", None, "the folder written by 'satgw keys DIR'")
    s.done()
    return d


def _num(s: Section, key: str, default: float, lo: float, hi: float) -> float:
    v = s.number(key, default, lo=lo, hi=hi)
    assert v is not None
    return v


def _int(s: Section, key: str, default: int, lo: int, hi: int) -> int:
    v = s.integer(key, default, lo=lo, hi=hi)
    assert v is not None
    return v


def _path(s: Section, key: str, default: str) -> str:
    v = s.path_value(key, default)
    assert v is not None
    return v


def _attachment(top: Section, control: str) -> dict[str, Any]:
    """The :class:`DaemonConfig` fields, read from ``top``."""
    return {
        "control": top.endpoint("control", control) or control,
        "log_level": top.choice("log_level", "info", LOG_LEVELS),
        "bundle": top.path_value("bundle", None, "a CADC model bundle folder"),
        "link": _link(top.section("link")),
        "frame": _frame(top.section("frame")),
        "curve_dir": _curve_dir(top.section("curve")),
        "metrics": read_metrics_section(top.section("metrics")),
        "source": top.source,
    }


def _sender(top: Section) -> SenderConfig:
    d = top.section("defaults")
    defaults = SenderDefaults(
        codec=_path(d, "codec", "webp"),
        packets=_int(d, "packets", 8, 1, 65535),
        priority=_int(d, "priority", 0, -1000, 1000),
        parity=_int(d, "parity", 0, 0, 255),
    )
    d.done()
    lim = top.section("limits")
    limits = SenderLimits(
        max_image_bytes=_int(lim, "max_image_bytes", 50_000_000, 1, 2**31),
        max_pixels=_int(lim, "max_pixels", 64_000_000, 1, 2**31),
        max_queue=_int(lim, "max_queue", 100_000, 1, 10_000_000),
    )
    lim.done()
    a = top.section("arq")
    arq = ArqSettings(
        initial_rto_s=_num(a, "initial_rto_s", 4.0, 0.001, 3600),
        min_rto_s=_num(a, "min_rto_s", 0.2, 0.0001, 3600),
        max_rto_s=_num(a, "max_rto_s", 120.0, 0.001, 36000),
        reorder_frames=_int(a, "reorder_frames", 2, 0, 10000),
        max_transmissions=_int(a, "max_transmissions", 50, 1, 100000),
        ttl_s=_num(a, "ttl_s", 86400.0, 1, 10 * 365 * 86400),
        burst_frames=_int(a, "burst_frames", 1, 0, 64),
        preview_first=a.boolean("preview_first", False),
    )
    if not arq.min_rto_s <= arq.initial_rto_s <= arq.max_rto_s:
        a.fail(a.key_path("initial_rto_s"), "must lie between arq.min_rto_s and arq.max_rto_s")
    a.done()
    cfg = SenderConfig(
        auto=_auto(top.section("auto")),
        spool=_path(top, "spool", "var/sender/spool.db"),
        inbox=top.path_value("inbox", None, "a folder polled for new images"),
        inbox_poll_s=_num(top, "inbox_poll_s", 1.0, 0.05, 3600),
        refine_steps=_int(top, "refine_steps", 0, 0, 1000),
        ladder=_ladder(top),
        spool_synchronous=top.choice("spool_synchronous", "FULL", SYNCHRONOUS),
        defaults=defaults,
        limits=limits,
        arq=arq,
        **_attachment(top, "tcp://127.0.0.1:5601"),
    )
    top.done()
    return cfg


def _ladder(top: Section) -> tuple[dict[str, Any], ...] | None:
    """``ladder``: CADC bundles by bits per pixel, a list of {bundle, from_bpp} (null or absent: none); its
    rungs' order and values are checked at the sender's start (:mod:`gateway.ratecontrol.ladder`)."""
    value = top.raw("ladder")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        top.fail(top.key_path("ladder"), "must be a list of {bundle: FOLDER, from_bpp: X}, e.g. "
                 "[{bundle: null, from_bpp: 0}, {bundle: models/y16, from_bpp: 0.03}]")
    if top.data.get("bundle") is not None:
        top.fail(top.key_path("ladder"), "and bundle are both set; give the models as ladder rungs and set "
                 "bundle to null (or drop the ladder to encode with bundle alone)")
    return tuple(dict(v) for v in value)


def _auto(s: Section) -> SenderAuto:
    """``auto``: the candidate list (null or a list of codec names), the metric, the drop margin."""
    value = s.raw("candidates")
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
        s.fail(s.key_path("candidates"), "must be a list of codec names, e.g. [cadc, avif, webp], or null for all")
    auto = SenderAuto(
        candidates=None if value is None else tuple(value),
        metric=s.string("metric", "ms_ssim"),
        drop_margin=s.number("drop_margin", None, lo=0.0, hi=100.0),
    )
    s.done()
    return auto


def _bundle_list(top: Section) -> tuple[str, ...]:
    """``bundles``: a list of bundle folders (null or absent: none)."""
    value = top.raw("bundles")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        top.fail(top.key_path("bundles"), "must be a list of CADC model bundle folders, e.g. [bundles/cadc-v1]")
    return tuple(value)


def _receiver(top: Section) -> ReceiverConfig:
    a = top.section("ack")
    ack = AckSettings(
        interval_s=_num(a, "interval_s", 1.0, 0.001, 3600),
        active_s=_num(a, "active_s", 60.0, 0.01, 86400),
        meta_grace_s=_num(a, "meta_grace_s", 300.0, 0, 3600),
    )
    a.done()
    d = top.section("decode")
    decode = DecodeSettings(
        worker=d.choice("worker", "process", ("process", "thread")),
        timeout_s=_num(d, "timeout_s", 600.0, 1, 86400),
        max_attempts=_int(d, "max_attempts", 3, 1, 100),
        retry_initial_s=_num(d, "retry_initial_s", 1.0, 0.01, 3600),
        retry_max_s=_num(d, "retry_max_s", 60.0, 0.01, 86400),
        check_bundle=d.boolean("check_bundle", True),
    )
    if decode.retry_max_s < decode.retry_initial_s:
        d.fail(d.key_path("retry_max_s"), "must be at least decode.retry_initial_s")
    d.done()
    pv = top.section("previews")
    previews = PreviewSettings(
        enabled=pv.boolean("enabled", True),
        quiet_s=_num(pv, "quiet_s", 10.0, 0.001, 86400),
        min_frames=_int(pv, "min_frames", 1, 1, 65535),
        lifetime_margin_s=_num(pv, "lifetime_margin_s", 300.0, 0, 10 * 365 * 86400),
    )
    pv.done()
    lim = top.section("limits")
    limits = ReceiverLimits(
        max_pending_messages=_int(lim, "max_pending_messages", 2000, 1, 10_000_000),
        max_frames_per_message=_int(lim, "max_frames_per_message", 4096, 1, 65535),
        max_batch_frames=_int(lim, "max_batch_frames", 256, 1, 100000),
        max_image_pixels=_int(lim, "max_image_pixels", 64_000_000, 1, 2**31),
    )
    lim.done()
    cfg = ReceiverConfig(
        store=_path(top, "store", "var/receiver/frames.db"),
        outbox=_path(top, "outbox", "var/receiver/outbox"),
        store_synchronous=top.choice("store_synchronous", "FULL", SYNCHRONOUS),
        ack=ack,
        decode=decode,
        limits=limits,
        bundles=_bundle_list(top),
        device=top.string("device", "auto"),
        precision=top.string("precision", "auto"),
        previews=previews,
        **_attachment(top, "tcp://127.0.0.1:5602"),
    )
    top.done()
    return cfg


T = TypeVar("T")


def _load(path: str | Path | None, overrides: dict[str, Any] | None, build: Callable[[Section], T]) -> T:
    """Read ``path`` (YAML; None for defaults only), lay dotted ``overrides`` over it, validate it all.

    Overrides whose value is None are ignored (an unset command-line option); :data:`NULL` sets null.
    """
    source = str(path) if path else "<defaults>"
    raw: Any = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} not found: pass --config with an existing YAML file")
        raw = read_yaml(path, "daemon config")
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, found {type(raw).__name__}")
    raw = copy.deepcopy(raw or {})
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, dotted, None if value is NULL else value)
    return build(Section(raw, "", source, null_is_default=False))


def load_sender_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SenderConfig:
    """The sender daemon's validated configuration."""
    return _load(path, overrides, _sender)


def load_receiver_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ReceiverConfig:
    """The ground-station daemon's validated configuration."""
    return _load(path, overrides, _receiver)


def read_auth_key(path: str | None, create: bool = False) -> bytes | None:
    """The HMAC pre-shared key from ``path`` (raw bytes, surrounding whitespace stripped), or None.

    With ``create`` a missing file is generated first (:func:`gateway.transport.keyfile.ensure_key_file`).
    """
    if path is None:
        return None
    try:
        return load_frame_key(path, create=create)
    except ConfigError as e:
        raise ConfigError(f"frame.auth_key_file: {e}") from e
