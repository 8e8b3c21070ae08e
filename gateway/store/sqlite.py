"""Opening the daemons' SQLite databases (sender spool, ground frame store) the durable way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.errors import StoreError


def open_durable_db(path: Path, synchronous: str, schema: str, what: str) -> sqlite3.Connection:
    """Open (creating if needed) a WAL database in autocommit mode and apply ``schema``.

    Autocommit plus explicit transactions means every state change is one
    commit; ``synchronous`` is FULL (fsync each commit: survives power loss) or
    NORMAL (survives a killed process).  ``what`` names the database in errors.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise StoreError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=30000")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot open {what} {path}: {e}; check the path and that the file is not corrupt") from e
    return db
