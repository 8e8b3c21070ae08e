"""What both daemons' Prometheus collectors export alike: their database, their attachment to the link, their faults.

The sender and the ground station each have a collector of their own
(:mod:`gateway.sender.metrics`, :mod:`gateway.ground.metrics`); these are the
families whose shape they share, read when scraped.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from gateway.daemon.faults import FaultBoard
from gateway.protocol.link_window import LinkWindow
from gateway.store.readonly import open_readonly, size_on_disk, state_counts
from gateway.transport.metrics_http import CounterSpec, counter_families, gauge, labelled_gauge


def database_families(prefix: str, path: str, states: Sequence[str], what: str, by_state_help: str) -> Iterator[Metric]:
    """``<prefix>_messages{state}`` from a read-only look at the database at ``path``, and ``<prefix>_size_bytes``."""
    db = open_readonly(path)
    if db is not None:  # not created yet: no message gauge rather than zeros that look like an empty queue
        try:
            counts = state_counts(db, states)
        finally:
            db.close()
        yield labelled_gauge(f"{prefix}_messages", by_state_help, "state", counts)
    yield gauge(f"{prefix}_size_bytes", f"Size of the {what} database and its write-ahead log", size_on_disk(path))


def link_families(prefix: str, window: LinkWindow, frame_size: int, frames: int, moved: str,
                  sees: str) -> Iterator[Metric]:
    """Bytes moved over the link (``frames`` x frame size), whether it is up, its capacity and the frame size.

    ``moved`` is ``sent`` or ``received``; ``sees`` says whose view of the link it is, for the help text.
    """
    yield from counter_families(
        [CounterSpec("bytes", f"{prefix}_bytes_{moved}_total", f"Bytes {moved} on the link (frames x frame size)")],
        {"bytes": frames * frame_size})
    yield gauge(f"{prefix}_link_up", f"1 while {sees} the link up (known and available), else 0",
                1 if window.known and window.up else 0)
    cap = window.forward_rate_bps / 8 * window.time_scale if window.forward_rate_bps else None
    yield gauge(f"{prefix}_link_capacity_bytes_per_second",
                f"Forward link capacity in bytes per wall second (utilization: rate(bytes_{moved}) / this)", cap)
    yield gauge(f"{prefix}_frame_size_bytes", "Size of one frame on the wire", frame_size)


def fault_families(prefix: str, faults: FaultBoard, resources: Sequence[str]) -> Iterator[Metric]:
    """``<prefix>_resource_fault{resource}`` (1 while it has a fault) and ``<prefix>_resource_faults_total``.

    ``resources`` are the ones the daemon can report, listed at 0 before their first fault so that an alert on
    ``== 1`` has a series to look at; a resource reported that is not in the list is exported too.
    """
    active = faults.snapshot()
    onsets = faults.onset_counts()
    names = list(dict.fromkeys([*resources, *active, *onsets]))
    yield labelled_gauge(f"{prefix}_resource_fault",
                         "1 while the resource has a fault (disk full, read-only, file deleted or replaced), else 0",
                         "resource", {r: 1 if r in active else 0 for r in names})
    total = CounterMetricFamily(f"{prefix}_resource_faults", "Resource faults that started since the daemon started",
                                labels=["resource"])
    for r in names:
        total.add_metric([r], float(onsets.get(r, 0)))
    yield total
