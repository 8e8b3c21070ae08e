"""What a daemon must remember about the authenticated link across restarts: its own epoch, and its peer's window.

Both databases (the sender's spool, the ground's frame store) keep a small
``settings`` table for it (format and rules in ``docs/frames.md``, *Replay
window*):

* ``epoch``: the epoch this daemon stamped its frames with last time; each
  start takes ``max(wall clock in seconds, last + 1)``, so epochs only grow;
* ``peer_window``: ``epoch:highest`` of the peer's frames taken so far, from
  which :meth:`packetizer.replay.ReplayWindow.restored` rebuilds the window.
"""

from __future__ import annotations

import sqlite3

from gateway.store.sqlite import store_error, transaction

SETTINGS_SCHEMA = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
_MAX_U32 = 0xFFFFFFFF


def _get(db: sqlite3.Connection, key: str) -> str | None:
    try:
        r = db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
    except sqlite3.Error as e:
        raise store_error(e, f"cannot read setting {key}") from e
    return None if r is None else str(r[0])


def _put(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
               (key, value))


def next_epoch(db: sqlite3.Connection, now: float) -> int:
    """This start's epoch, ``max(int(now), last epoch + 1)``, committed before it is used."""
    last = _get(db, "epoch")
    epoch = min(max(int(now), int(last) + 1 if last is not None else 0), _MAX_U32)
    with transaction(db, "cannot record the link epoch"):
        _put(db, "epoch", str(epoch))
    return epoch


def load_peer_window(db: sqlite3.Connection) -> tuple[int, int] | None:
    """(epoch, highest seq) of the peer's frames taken before, or None."""
    raw = _get(db, "peer_window")
    if raw is None:
        return None
    try:
        epoch, highest = (int(x) for x in raw.split(":"))
    except ValueError:
        return None  # unreadable: start a fresh window (the peer's next frame sets it)
    return epoch, highest


def save_peer_window(db: sqlite3.Connection, state: tuple[int, int] | None) -> None:
    """Record the peer's window inside the caller's open transaction (nothing when None)."""
    if state is not None:
        _put(db, "peer_window", f"{state[0]}:{state[1]}")
