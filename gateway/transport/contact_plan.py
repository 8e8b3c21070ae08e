"""When the link is up: the availability models, and the contact plan a daemon plans its sending by.

All times are link seconds.  An availability object answers two questions:
:meth:`is_up` (is the link up at ``t``?) and :meth:`next_change` (when does
that answer next change?).  Up intervals are half open, ``[start, end)``.

A *contact plan* is a small YAML file (format in ``docs/daemons.md``) that
says when the link is up and at what rates; the sender and the ground
station follow it when they cannot ask the link for its schedule, and the
link simulator can build its windows from the same file
(``availability: {contact_plan: FILE}`` in a link preset)::

    version: 1
    time_scale: 1.0            # link seconds per wall second (1 outside simulation)
    forward_rate_bps: 9600
    return_rate_bps: 9600
    availability:              # one of always / windows / periodic, as in a link preset
      periodic: {period_s: 5700, duration_s: 600, offset_s: 0}
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from gateway.errors import ConfigError
from gateway.transport.config_reader import Section, read_yaml, show

CONTACT_PLAN_VERSION = 1


class Availability(Protocol):
    """What channels and daemons need to know about the link's schedule."""

    def is_up(self, t: float) -> bool:
        """True if the link is up at simulation time ``t``."""
        ...

    def next_change(self, t: float) -> float | None:
        """The first time after ``t`` at which :meth:`is_up` changes, or None if never."""
        ...


@dataclass(frozen=True)
class AlwaysUp:
    """The link never goes down."""

    def is_up(self, t: float) -> bool:
        """Always True."""
        return True

    def next_change(self, t: float) -> float | None:
        """Always None: nothing ever changes."""
        return None


class Windows:
    """The link is up only inside the given ``[start, end)`` windows.

    Overlapping or touching windows are merged, so :meth:`next_change` always
    names a real change.  Outside every window the link is down.
    """

    def __init__(self, windows: Sequence[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for start, end in sorted((float(s), float(e)) for s, e in windows):
            if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
                raise ValueError(f"window ({start}, {end}) must be finite with end > start")
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.windows: tuple[tuple[float, float], ...] = tuple((s, e) for s, e in merged)
        # Flattened boundaries: t is up iff an odd number of boundaries are <= t.
        self._edges = [x for w in self.windows for x in w]

    def is_up(self, t: float) -> bool:
        """True if ``t`` lies inside a window."""
        return bisect.bisect_right(self._edges, t) % 2 == 1

    def next_change(self, t: float) -> float | None:
        """The next window start or end after ``t``, or None after the last window."""
        i = bisect.bisect_right(self._edges, t)
        return self._edges[i] if i < len(self._edges) else None

    def __repr__(self) -> str:
        return f"Windows({list(self.windows)!r})"


@dataclass(frozen=True)
class PeriodicPasses:
    """Passes of ``duration_s`` every ``period_s``, the first starting at ``offset_s``.

    The pattern extends to negative times too, so ``is_up`` is defined for
    every ``t``.  ``duration_s == period_s`` means always up.
    """

    period_s: float
    duration_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise ValueError(f"period_s must be a positive number, got {self.period_s}")
        if not (0 < self.duration_s <= self.period_s):
            raise ValueError(f"duration_s must be in (0, period_s], got {self.duration_s}")

    def _last_start(self, t: float) -> float:
        """Start of the latest pass beginning at or before ``t``."""
        period = self.period_s
        start = self.offset_s + math.floor((t - self.offset_s) / period) * period
        # Rounding can put the start one period off; nudge it so start <= t < start + period.
        if start > t:
            start -= period
        elif start + period <= t:
            start += period
        return start

    def is_up(self, t: float) -> bool:
        """True during a pass."""
        return self.duration_s >= self.period_s or t < self._last_start(t) + self.duration_s

    def next_change(self, t: float) -> float | None:
        """End of the current pass, or start of the next one."""
        if self.duration_s >= self.period_s:
            return None
        start = self._last_start(t)
        end = start + self.duration_s
        return end if t < end else start + self.period_s


def up_until(availability: Availability, t: float) -> float:
    """End of the up interval that contains ``t`` (``inf`` if it never ends).

    Only meaningful when ``availability.is_up(t)``.
    """
    change = availability.next_change(t)
    return math.inf if change is None else change


def parse_availability(s: Section, base_dir: str | os.PathLike = ".", *, allow_contact_plan: bool = True) -> Availability:
    """The availability described by section ``s``: one of ``always``, ``windows``, ``periodic`` or
    ``contact_plan`` (a contact-plan file, relative to ``base_dir``, whose availability is used)."""
    modes = [k for k in ("always", "windows", "periodic", "contact_plan") if s.has(k)]
    if "contact_plan" in modes and not allow_contact_plan:
        s.fail(s.key_path("contact_plan"), "a contact plan cannot refer to another one")
    if len(modes) > 1:
        s.fail(s.path, f"give one of always, windows, periodic, contact_plan; got {', '.join(modes)}")
    mode = modes[0] if modes else "always"
    if mode == "always":
        if s.raw("always") is not None and s.raw("always") is not True:
            s.fail(s.key_path("always"), "must be true (leave availability out for an always-up link)")
        s.done()
        return AlwaysUp()
    if mode == "contact_plan":
        ref = s.path_value("contact_plan", None, "a contact-plan file")
        assert ref is not None
        s.done()
        p = Path(ref) if Path(ref).is_absolute() else Path(base_dir) / ref
        try:
            return load_contact_plan(p).availability
        except ConfigError as e:
            s.fail(s.key_path("contact_plan"), str(e))
    if mode == "windows":
        raw, path = s.raw("windows"), s.key_path("windows")
        if not isinstance(raw, list) or len(raw) > 100_000:
            s.fail(path, "must be a list of [start_s, end_s] pairs")
        pairs = []
        for i, w in enumerate(raw):
            if not (isinstance(w, list) and len(w) == 2):
                s.fail(f"{path}[{i}]", f"must be a [start_s, end_s] pair, got {show(w)}")
            ws = Section({"start": w[0], "end": w[1]}, f"{path}[{i}]", s.source, error=s.error)
            start = ws.number("start", None, lo=-1e12, hi=1e12, required=True)
            end = ws.number("end", None, lo=-1e12, hi=1e12, required=True)
            assert start is not None and end is not None
            if end <= start:
                s.fail(f"{path}[{i}]", f"end ({end:g}) must be after start ({start:g})")
            pairs.append((start, end))
        s.done()
        return Windows(pairs)
    p = s.section("periodic")
    period = p.number("period_s", None, lo=0.0, hi=1e9, lo_open=True, required=True)
    assert period is not None
    duration = p.number("duration_s", None, lo=0.0, hi=period, lo_open=True, required=True)
    offset = p.number("offset_s", 0.0, lo=-1e12, hi=1e12)
    assert duration is not None and offset is not None
    p.done()
    s.done()
    return PeriodicPasses(period, duration, offset)


@dataclass(frozen=True)
class ContactPlan:
    """When the link is up and how fast it is, as a daemon plans it (link seconds, bit/s)."""

    forward_rate_bps: float
    return_rate_bps: float
    availability: Availability = field(default_factory=AlwaysUp)
    time_scale: float = 1.0  # link seconds per wall second
    source: str = ""


def parse_contact_plan(data: object, source: str = "<contact plan>", base_dir: str | os.PathLike = ".") -> ContactPlan:
    """Validate a parsed contact-plan document (unknown keys and bad values name their key path)."""
    top = Section(data, "", source)
    version = top.integer("version", None, lo=0, hi=255)
    if version != CONTACT_PLAN_VERSION:
        top.fail("version", f"must be {CONTACT_PLAN_VERSION} (this build reads contact plans of version "
                            f"{CONTACT_PLAN_VERSION}), got {show(version)}")
    time_scale = top.number("time_scale", 1.0, lo=0.0, hi=1e6, lo_open=True)
    fwd = top.number("forward_rate_bps", None, lo=0.0, hi=1e12, lo_open=True, required=True)
    ret = top.number("return_rate_bps", fwd, lo=0.0, hi=1e12, lo_open=True)
    availability = parse_availability(top.section("availability"), base_dir, allow_contact_plan=False)
    top.done()
    assert time_scale is not None and fwd is not None and ret is not None
    return ContactPlan(fwd, ret, availability, time_scale, source)


def load_contact_plan(path: str | os.PathLike) -> ContactPlan:
    """Read and validate a contact-plan YAML file."""
    p = Path(path)
    return parse_contact_plan(read_yaml(p, "contact plan"), source=str(p), base_dir=p.parent)
