"""How both stores keep a frame: one row per DATA or PARITY frame, the same columns in the spool and the frame store.

A message's ``k`` and ``n`` live on its message row, so a frame row holds only
``(message_id, idx, type, last_len, payload)`` and reads back as the very
:class:`~packetizer.frame.Frame` the packetizer made.
"""

from __future__ import annotations

import sqlite3

from packetizer.frame import Frame, FrameType

#: The frames table of both databases (the spool adds its ``acked`` column after these).
FRAME_COLUMNS = """
    message_id  INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    type        INTEGER NOT NULL,
    last_len    INTEGER NOT NULL,
    payload     BLOB NOT NULL"""

INSERT = "INSERT INTO frames (message_id, idx, type, last_len, payload) VALUES (?, ?, ?, ?, ?)"
#: The same, keeping the row already there (a duplicate frame changes nothing).
INSERT_NEW = INSERT.replace("INSERT", "INSERT OR IGNORE", 1)


def row(frame: Frame) -> tuple[int, int, int, int, bytes]:
    """The row values of ``frame`` (for :data:`INSERT`)."""
    return (frame.message_id, frame.index, int(frame.type), frame.last_len, frame.payload)


def read_frames(db: sqlite3.Connection, message_id: int, k: int, n: int) -> list[Frame]:
    """The stored frames of ``message_id`` in index order."""
    rows = db.execute(
        "SELECT idx, type, last_len, payload FROM frames WHERE message_id=? ORDER BY idx", (message_id,)
    ).fetchall()
    return [Frame(FrameType(t), message_id, int(i), k, n, bytes(p), int(ll)) for i, t, ll, p in rows]
