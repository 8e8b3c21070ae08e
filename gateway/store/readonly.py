"""Reading the daemons' databases from beside them: read-only connections, counts by state, sizes on disk.

The metrics scrape thread and the ground-station web page look at the spool
and the frame store while their daemon writes them. They open their own
connection with SQLite's ``mode=ro`` (one per thread, as sqlite3 wants), which
in WAL mode reads a consistent snapshot without ever blocking the writer,
and can neither change a row nor create a missing database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

from gateway.errors import StoreError


def open_readonly(path: str | Path) -> sqlite3.Connection | None:
    """A read-only connection to the database at ``path``, or None while it does not exist yet."""
    p = Path(path).resolve()
    if not p.is_file():
        return None
    try:
        db = sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {p} read-only: {e}; check that it is a satgw database") from e
    return db


def state_counts(db: sqlite3.Connection, states: Iterable[str]) -> dict[str, int]:
    """Rows of the ``messages`` table per state (every state in ``states`` present, zero included)."""
    out = dict.fromkeys(states, 0)
    for state, c in db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"):
        out[state] = int(c)
    return out


def size_on_disk(path: str | Path) -> int:
    """Bytes the database at ``path`` takes: the main file plus its write-ahead log (0 if absent)."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += Path(f"{path}{suffix}").stat().st_size
        except OSError:
            pass
    return total
