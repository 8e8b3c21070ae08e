"""Structured logging for the daemons: one JSON object per line on stderr.

Daemons log events (``{"ts": ..., "level": ..., "daemon": ..., "event": ..., **fields}``)
rather than prose so a ground segment can grep, count and alert on them.
Floods of bad input must not flood the log, so :class:`EventLog.throttled`
emits at most one line per key and interval and reports how many it held back.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    """Writes JSON log lines for one daemon (thread safe)."""

    def __init__(self, daemon: str, level: str = "info", stream: TextIO | None = None) -> None:
        if level not in _LEVELS:
            raise ValueError(f"log level {level!r} is not one of {sorted(_LEVELS)}")
        self.daemon = daemon
        self._min = _LEVELS[level]
        self._stream = stream
        self._lock = threading.Lock()
        self._throttle: dict[str, tuple[float, int]] = {}

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Emit one line if ``level`` is at or above the configured level."""
        if _LEVELS.get(level, 0) < self._min:
            return
        record = {"ts": round(time.time(), 3), "level": level, "daemon": self.daemon, "event": event}
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":"))
        stream = self._stream or sys.stderr
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                # A closed or broken stderr must never take the daemon down.
                pass

    def debug(self, event: str, **fields: Any) -> None:
        """Log at debug level."""
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log at info level."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log at warning level."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log at error level."""
        self.log("error", event, **fields)

    def throttled(self, key: str, interval_s: float, level: str, event: str, **fields: Any) -> None:
        """Log at most once per ``interval_s`` for ``key``; adds ``suppressed`` (lines held back since)."""
        now = time.monotonic()
        with self._lock:
            last, held = self._throttle.get(key, (-1e18, 0))
            if now - last < interval_s:
                self._throttle[key] = (last, held + 1)
                return
            self._throttle[key] = (now, 0)
        self.log(level, event, suppressed=held, **fields)
