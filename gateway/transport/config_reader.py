"""The one reader of YAML configs: daemon configs, link presets and contact plans all go through it.

A :class:`Section` wraps one YAML mapping. Typed getters read a key, check
its type and range, and fail with the key's dotted path and the file it came
from (``arq.min_rto_s: must be between 0.0001 and 3600, got 0 (in
sender.yaml)``); :meth:`Section.done` then fails on any key nobody read, so
a typo is an error rather than a silently ignored setting.

It lives in :mod:`gateway.transport` because the link simulator reads its
presets with it too, and the simulator may depend on nothing of the
gateway's but the transport and the error classes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from gateway.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # configs are a few hundred bytes; refuse anything absurd unread
ENDPOINT_SCHEMES = ("tcp", "ipc", "inproc")


def show(v: Any) -> str:
    """``repr(v)`` cut to 60 characters, for error messages about untrusted values."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class Section:
    """A YAML mapping being read: typed getters that check ranges, then a check for leftover keys.

    ``error`` is the exception class raised (a :class:`ConfigError` subclass, so
    the link simulator can raise its own). With ``null_is_default`` (the link
    presets' rule) a key set to null reads as its default; without it (the
    daemon configs' rule) null is refused for every key whose default is not
    null.
    """

    def __init__(
        self,
        data: Any,
        path: str,
        source: str,
        *,
        error: type[ConfigError] = ConfigError,
        null_is_default: bool = True,
    ) -> None:
        self.path, self.source, self.error, self.null_is_default = path, source, error, null_is_default
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping of keys to values, got {show(data)}")
        self.data = dict(data)
        self.read: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        """Raise the configured error for the key at ``path``."""
        raise self.error(f"{path or '<top level>'}: {message} (in {self.source})")

    def key_path(self, key: str) -> str:
        """The dotted path of ``key`` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        """Whether ``key`` is set to something other than null."""
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        """The value of ``key`` as YAML gave it (None if absent), marking it read."""
        self.read.add(key)
        return self.data.get(key)

    def _value(self, key: str, default: Any) -> Any:
        v = self.raw(key)
        if v is None and key in self.data and default is not None and not self.null_is_default:
            self.fail(self.key_path(key), "is required; remove the key for the default or give a value")
        return v

    def number(
        self,
        key: str,
        default: float | None,
        *,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        required: bool = False,
    ) -> float | None:
        """A finite float in [lo, hi] (or (lo, hi] with ``lo_open``); numeric strings like ``1e-5`` are accepted."""
        v, path = self._value(key, default), self.key_path(key)
        if v is None:
            if required:
                self.fail(path, "is required")
            return default
        if isinstance(v, str):
            try:
                v = float(v)  # YAML 1.1 reads "1e-5" (no dot) as a string
            except ValueError:
                self.fail(path, f"must be a number, got {show(v)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(path, f"must be a finite number, got {show(v)}")
        v = float(v)
        if lo is not None and hi is not None and not ((v > lo if lo_open else v >= lo) and v <= hi):
            interval = f"greater than {lo:g} and at most {hi:g}" if lo_open else f"between {lo:g} and {hi:g}"
            self.fail(path, f"must be {interval}, got {v:g}")
        if lo is not None and hi is None and not (v > lo if lo_open else v >= lo):
            self.fail(path, f"must be {'greater than' if lo_open else 'at least'} {lo:g}, got {v:g}")
        return v

    def probability(self, key: str, default: float = 0.0, *, required: bool = False) -> float:
        """A number in [0, 1]."""
        v = self.number(key, default, lo=0.0, hi=1.0, required=required)
        assert v is not None
        return v

    def integer(self, key: str, default: int | None, *, lo: int, hi: int) -> int | None:
        """A whole number in [lo, hi]."""
        v, path = self._value(key, default), self.key_path(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"must be a whole number, got {show(v)}")
        if not lo <= v <= hi:
            self.fail(path, f"must be between {lo} and {hi}, got {v}")
        return int(v)

    def boolean(self, key: str, default: bool) -> bool:
        """true or false (YAML booleans only: ``yes``/``1`` in quotes are refused as ambiguous)."""
        v = self._value(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.fail(self.key_path(key), f"must be true or false, got {show(v)}")
        return v

    def string(self, key: str, default: str) -> str:
        """Text (possibly empty)."""
        v = self._value(key, default)
        if v is None:
            return default
        if not isinstance(v, str):
            self.fail(self.key_path(key), f"must be text, got {show(v)}")
        return v

    def path_value(self, key: str, default: str | None, what: str = "a path") -> str | None:
        """Non-empty text naming a file or folder; null allowed only when ``default`` is null."""
        v = self._value(key, default)
        if v is None:
            return default
        if not isinstance(v, str) or not v:
            self.fail(self.key_path(key), f"must be {what}, got {show(v)}")
        return v

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices``."""
        v = self._value(key, default)
        if v is None:
            return default
        if v not in choices:
            self.fail(self.key_path(key), f"must be one of {', '.join(choices)}, got {show(v)}")
        return v

    def endpoint(self, key: str, default: str | None) -> str | None:
        """A ZeroMQ endpoint (``tcp://``, ``ipc://`` or ``inproc://``); null allowed only when ``default`` is null."""
        v = self._value(key, default)
        if v is None:
            return default
        if not isinstance(v, str) or "://" not in v or v.split("://", 1)[0] not in ENDPOINT_SCHEMES:
            self.fail(self.key_path(key), f"must be a ZMQ endpoint like tcp://127.0.0.1:5551, got {show(v)}")
        return v

    def section(self, key: str) -> "Section":
        """The nested mapping under ``key`` (empty if absent), read with the same rules."""
        return Section(
            self.raw(key), self.key_path(key), self.source, error=self.error, null_is_default=self.null_is_default
        )

    def done(self) -> None:
        """Fail on the first key that no getter read (a typo or a key this version does not know)."""
        unknown = sorted(str(k) for k in self.data if k not in self.read)
        if unknown:
            expected = ", ".join(sorted(self.read)) or "no keys"
            self.fail(self.key_path(unknown[0]), f"unknown key; expected one of: {expected}")


def read_yaml(path: str | os.PathLike, what: str, error: type[ConfigError] = ConfigError) -> Any:
    """The parsed YAML document at ``path`` (size-capped), or ``error`` naming the file and ``what`` it should be."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise error(f"{p}: {size} bytes is too big for a {what} (limit {MAX_CONFIG_BYTES})")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read {what}: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any, error: type[ConfigError] = ConfigError) -> None:
    """Set ``a.b.c`` in nested mappings (command-line overrides of a config file)."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise error(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value
