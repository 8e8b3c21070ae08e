"""Configuration of the sender and ground-station daemons (YAML), validated at start.

Every key is checked against a schema before a daemon touches a socket or a
file: unknown keys, wrong types and out-of-range values raise
:class:`gateway.errors.ConfigError` naming the dotted key and what to do.
Durations under ``arq`` and ``ack`` are in *link* seconds (simulated time; they
are divided by the link's time scale at run time); ``ttl_s``, ``inbox_poll_s``
and ``decode.timeout_s`` are wall-clock seconds. Relative paths are relative
to the current directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.errors import ConfigError

_ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")


def _endpoint(v: Any) -> bool:
    return isinstance(v, str) and v.startswith(_ENDPOINT_PREFIXES)


def _opt_endpoint(v: Any) -> bool:
    return v is None or _endpoint(v)


def _path(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _opt_path(v: Any) -> bool:
    return v is None or _path(v)


def _num(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _int(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


# Schema: key -> (default, validator, description of valid values) or a nested dict.
_FRAME = {
    "size": (450, _int(64, 9000), "an integer frame size in bytes, 64..9000 (both daemons and the link must agree)"),
    "auth_key_file": (None, _opt_path, "a path to the pre-shared HMAC key file, or null for no frame tags"),
    "tag_len": (8, _int(4, 32), "an HMAC tag length in bytes, 4..32"),
}
_CURVE = {
    "dir": (None, _opt_path, "the folder written by 'satgw keys DIR', or null for no CURVE"),
}
_LINK = {
    "endpoint": (None, _endpoint, "a ZeroMQ endpoint such as tcp://127.0.0.1:5551 (the link's side for this daemon)"),
    "control": (None, _opt_endpoint, "the link's control endpoint (tcp://...), or null to use link.preset"),
    "preset": (None, _opt_path, "a link preset name or YAML file, used only when link.control is null"),
    "schedule_poll_s": (0.5, _num(0.01, 60), "a wall-clock polling period in seconds, 0.01..60"),
    "control_timeout_s": (0.5, _num(0.01, 30), "a wall-clock request timeout in seconds, 0.01..30"),
}

SENDER_SCHEMA: dict[str, Any] = {
    "spool": ("var/sender/spool.db", _path, "a path for the SQLite spool file"),
    "inbox": (None, _opt_path, "a folder polled for new images, or null for none"),
    "inbox_poll_s": (1.0, _num(0.05, 3600), "a wall-clock polling period in seconds"),
    "control": ("tcp://127.0.0.1:5601", _endpoint, "a ZeroMQ endpoint to bind for 'satgw send' and 'satgw status'"),
    "log_level": ("info", _one_of("debug", "info", "warning", "error"), "one of debug, info, warning, error"),
    "spool_synchronous": ("FULL", _one_of("FULL", "NORMAL"), "FULL (fsync every commit) or NORMAL"),
    "bundle": (None, _opt_path, "a CADC model bundle folder, or null for the embedded cadc-tiny"),
    "link": _LINK,
    "frame": _FRAME,
    "curve": _CURVE,
    "defaults": {
        "codec": ("webp", lambda v: isinstance(v, str) and v != "", "a codec name: webp, avif, jxl, jpeg or cadc"),
        "packets": (8, _int(1, 65535), "an image budget in frames, 1..65535"),
        "priority": (0, _int(-1000, 1000), "an integer priority, -1000..1000 (higher goes first)"),
        "parity": (0, _int(0, 255), "a number of erasure-coded parity frames, 0..255"),
    },
    "limits": {
        "max_image_bytes": (50_000_000, _int(1, 2**31), "a maximum accepted image file size in bytes"),
        "max_pixels": (64_000_000, _int(1, 2**31), "a maximum accepted image size in pixels"),
        "max_queue": (100_000, _int(1, 10_000_000), "a maximum number of undelivered messages in the spool"),
    },
    "arq": {
        "initial_rto_s": (4.0, _num(0.001, 3600), "a first retransmit timeout in link seconds"),
        "min_rto_s": (0.2, _num(0.0001, 3600), "a lower bound of the retransmit timeout in link seconds"),
        "max_rto_s": (120.0, _num(0.001, 36000), "an upper bound of the retransmit timeout in link seconds"),
        "reorder_frames": (2, _int(0, 10000), "how many later frames must be acked before a hole counts as lost"),
        "max_transmissions": (50, _int(1, 100000), "how often one frame may be sent before its message fails"),
        "ttl_s": (86400.0, _num(1, 10 * 365 * 86400), "wall-clock seconds a message may wait before it expires"),
        "burst_frames": (1, _int(0, 64), "how many frames of pacing credit a late loop may catch up"),
    },
}

RECEIVER_SCHEMA: dict[str, Any] = {
    "store": ("var/receiver/frames.db", _path, "a path for the SQLite frame store"),
    "outbox": ("var/receiver/outbox", _path, "a folder for the decoded PNG and JSON files"),
    "control": ("tcp://127.0.0.1:5602", _endpoint, "a ZeroMQ endpoint to bind for 'satgw status'"),
    "log_level": ("info", _one_of("debug", "info", "warning", "error"), "one of debug, info, warning, error"),
    "store_synchronous": ("FULL", _one_of("FULL", "NORMAL"), "FULL (fsync every commit) or NORMAL"),
    "bundle": (None, _opt_path, "a CADC model bundle folder, or null for the embedded cadc-tiny"),
    "link": _LINK,
    "frame": _FRAME,
    "curve": _CURVE,
    "ack": {
        "interval_s": (1.0, _num(0.001, 3600), "a periodic ACK interval in link seconds"),
        "active_s": (60.0, _num(0.01, 86400), "link seconds a quiet message keeps being ACKed periodically"),
        "meta_grace_s": (300.0, _num(0, 3600), "link seconds an assembled message waits for its META frame"),
    },
    "decode": {
        "worker": ("process", _one_of("process", "thread"), "process or thread"),
        "timeout_s": (600.0, _num(1, 86400), "wall-clock seconds one decode may take before it is failed"),
        "max_attempts": (3, _int(1, 100), "how often a decode is retried after its worker died"),
    },
    "limits": {
        "max_pending_messages": (2000, _int(1, 10_000_000), "how many incomplete messages the store keeps"),
        "max_frames_per_message": (4096, _int(1, 65535), "the largest n (frames per message) accepted"),
        "max_batch_frames": (256, _int(1, 100000), "how many frames are stored per commit"),
    },
}


@dataclass
class DaemonConfig:
    """A validated configuration: ``cfg["link"]["endpoint"]`` style access, plus the file it came from."""

    data: dict[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def _validate(raw: Any, schema: dict[str, Any], prefix: str, source: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix or 'top level'}' must be a mapping, found {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{source}: unknown key '{key}'; valid keys here: {', '.join(sorted(schema))}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, dict):
            out[key] = _validate(raw.get(key), spec, dotted + ".", source)
            continue
        default, check, what = spec
        value = raw.get(key, copy.deepcopy(default))
        if value is None and default is not None:
            raise ConfigError(f"{source}: key '{dotted}' is required: set it to {what}")
        if value is None and not check(None):
            raise ConfigError(f"{source}: key '{dotted}' is required: set it to {what}")
        if not check(value):
            raise ConfigError(f"{source}: key '{dotted}' = {value!r} is invalid: use {what}")
        out[key] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(
    path: str | Path | None, schema: dict[str, Any], overrides: dict[str, Any] | None = None
) -> DaemonConfig:
    """Read ``path`` (YAML; None for defaults only), apply dotted ``overrides``, validate everything.

    Overrides whose value is None are ignored (an unset CLI option).
    """
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found: pass --config with an existing YAML file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e}); fix the syntax") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, found {type(loaded).__name__}")
        raw = loaded or {}
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    data = _validate(raw, schema, "", source)
    arq = data.get("arq")
    if arq and not arq["min_rto_s"] <= arq["initial_rto_s"] <= arq["max_rto_s"]:
        raise ConfigError(f"{source}: key 'arq.initial_rto_s' must lie between arq.min_rto_s and arq.max_rto_s")
    if data["link"]["control"] is None and data["link"]["preset"] is None:
        raise ConfigError(
            f"{source}: key 'link.control' is null and 'link.preset' is not set: give the link's control endpoint "
            "(preferred) or a link preset file so the daemon knows the link's rate and outages"
        )
    return DaemonConfig(data, source)


def load_sender_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """The sender daemon's validated configuration."""
    return load_config(path, SENDER_SCHEMA, overrides)


def load_receiver_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """The ground-station daemon's validated configuration."""
    return load_config(path, RECEIVER_SCHEMA, overrides)


def read_auth_key(path: str | None) -> bytes | None:
    """The HMAC pre-shared key from ``path`` (raw bytes, surrounding whitespace stripped), or None."""
    if path is None:
        return None
    p = Path(path)
    try:
        key = p.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"key 'frame.auth_key_file': cannot read {p} ({e.strerror}); create it or fix the path") from e
    if len(key) < 16:
        raise ConfigError(f"key 'frame.auth_key_file': {p} holds {len(key)} bytes; use at least 16 random bytes")
    return key
