"""Opening the daemons' SQLite databases (sender spool, ground frame store) the durable way, and writing to them.

Every write is one :func:`transaction`: ``BEGIN IMMEDIATE`` ... ``COMMIT``, or a
rollback that leaves the database as it was. SQLite errors leave this module
as :class:`~gateway.errors.StoreError`; the ones that mean the host refused
(disk full, read-only, I/O error, the file gone) as
:class:`~gateway.errors.StoreUnavailable`, so a daemon can tell "retry when
there is room" from "this operation is wrong".
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gateway.errors import StoreError, StoreUnavailable

#: Primary SQLite result codes that mean the host refused: BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
_HOST_CODES = {5, 6, 8, 10, 13, 14}


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


def store_error(e: BaseException, what: str) -> StoreError:
    """The StoreError for SQLite error ``e`` while doing ``what`` (StoreUnavailable when the host refused)."""
    code = getattr(e, "sqlite_errorcode", None)
    host = (code is not None and code & 0xFF in _HOST_CODES) or isinstance(e, OSError) or (
        code is None and any(w in str(e) for w in ("disk is full", "readonly", "disk I/O", "unable to open"))
    )
    if host:
        return StoreUnavailable(f"{what}: {e} (the disk refuses: it is full or read-only, or the file is gone)")
    return StoreError(f"{what}: {e}")


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite rolls a transaction back by itself on some errors (SQLITE_FULL among them); a second
    # ROLLBACK would then fail with "no transaction is active" and hide the real error.
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


@contextmanager
def transaction(db: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back on any error.

    SQLite errors are raised as :class:`StoreError` (``what`` says what was being done);
    other exceptions pass through unchanged after the rollback.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        raise store_error(e, what) from e
    try:
        yield db
        db.execute("COMMIT")
    except sqlite3.Error as e:
        _rollback(db)
        raise store_error(e, what) from e
    except BaseException:
        _rollback(db)
        raise


def add_missing_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add ``columns`` (name -> SQL type and default) that an older database's ``table`` lacks."""
    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns.items():
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
