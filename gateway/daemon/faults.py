"""Resource faults a daemon lives through: a full or read-only disk, a file deleted under it.

A daemon does not die of them. It reports each fault when it starts (one
``resource_fault`` error line, then a reminder at most once a minute), keeps
what it has, retries, and reports ``resource_recovered`` when the resource
works again. :meth:`FaultBoard.snapshot` is what ``satgw status`` shows;
:attr:`FaultBoard.onsets` counts faults per resource for metrics.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.transport.eventlog import EventLog

REMINDER_S = 60.0


class FaultBoard:
    """The resource faults active now (thread safe: the sender's encoder thread reports here too)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._active: dict[str, dict[str, Any]] = {}
        self.onsets: dict[str, int] = {}  #: faults seen per resource since start

    def report(self, resource: str, error: str) -> None:
        """``resource`` failed with ``error`` (a sentence); logged when the fault starts, then once a minute."""
        now = time.time()
        with self._lock:
            fault = self._active.get(resource)
            first = fault is None
            if first:
                fault = self._active[resource] = {"error": error, "since": now, "count": 0, "logged": 0.0}
                self.onsets[resource] = self.onsets.get(resource, 0) + 1
            fault["error"] = error
            fault["count"] += 1
            due = first or now - fault["logged"] >= REMINDER_S
            if due:
                fault["logged"] = now
            count, since = fault["count"], fault["since"]
        if due:
            self.log.error("resource_fault", resource=resource, error=error, failures=count,
                           for_s=round(now - since, 1))

    def clear(self, resource: str) -> None:
        """``resource`` works again (no-op when it had no fault)."""
        with self._lock:
            fault = self._active.pop(resource, None)
        if fault is not None:
            self.log.info("resource_recovered", resource=resource, after_s=round(time.time() - fault["since"], 1),
                          failures=fault["count"])

    def active(self, resource: str) -> bool:
        """Whether ``resource`` has a fault now."""
        with self._lock:
            return resource in self._active

    def onset_counts(self) -> dict[str, int]:
        """A copy of :attr:`onsets` (safe from another thread, e.g. a metrics scrape)."""
        with self._lock:
            return dict(self.onsets)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The active faults: resource -> {error, since (wall time), failures}."""
        with self._lock:
            return {r: {"error": f["error"], "since": round(f["since"], 3), "failures": f["count"]}
                    for r, f in self._active.items()}
