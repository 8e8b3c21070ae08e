"""The revisions of each message's picture the ground station wrote: previews, then the complete picture.

A message whose frames stop coming may be written early as a *preview*
(decoded from the data frames 0..j-1 that arrived), and again each time
more of it arrives; the complete picture is its last revision. Every
revision the outbox got is one row here, committed in the same transaction
as the rest of what the ground records about it (the complete picture's row
with the ``done`` state), so after a crash the store says which revision is
the last one written. Rows only ever go up: :func:`record` refuses a
revision that is not higher than the message's latest, so no revision is
recorded twice and none goes backwards. Rows stay after the message is done
(they are small), as the picture's history for ``status`` and the web page.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    message_id   INTEGER NOT NULL,
    revision     INTEGER NOT NULL,
    complete     INTEGER NOT NULL,
    frames_used  INTEGER NOT NULL,
    frames_data  INTEGER NOT NULL,
    layers       INTEGER,
    layers_total INTEGER,
    written_at   REAL NOT NULL,
    PRIMARY KEY (message_id, revision)
) WITHOUT ROWID;
"""

_COLS = "message_id, revision, complete, frames_used, frames_data, layers, layers_total, written_at"
#: Largest message id list one query takes (SQLite's default limit on bound parameters is far above it).
_CHUNK = 500


@dataclass(frozen=True)
class Revision:
    """One written revision of a message's picture.

    ``frames_used`` of ``frames_data``: the data frames 0..j-1 it was decoded
    from (all k for the complete picture, parity-rebuilt ones included);
    ``layers`` of ``layers_total``: what the codec decoded of its layers
    (None for a codec without layers).
    """

    message_id: int
    revision: int
    complete: bool
    frames_used: int
    frames_data: int
    layers: int | None
    layers_total: int | None
    written_at: float

    def as_dict(self) -> dict[str, object]:
        """The revision for status replies and the web page (JSON-able)."""
        return {"revision": self.revision, "complete": self.complete, "frames_used": self.frames_used,
                "frames_data": self.frames_data, "layers": self.layers, "layers_total": self.layers_total,
                "written_at": self.written_at}


def _row(r: tuple) -> Revision:
    return Revision(int(r[0]), int(r[1]), bool(r[2]), int(r[3]), int(r[4]), None if r[5] is None else int(r[5]),
                    None if r[6] is None else int(r[6]), float(r[7]))


def latest(db: sqlite3.Connection, message_id: int) -> Revision | None:
    """The highest revision recorded for ``message_id``, or None."""
    r = db.execute(f"SELECT {_COLS} FROM revisions WHERE message_id=? ORDER BY revision DESC LIMIT 1",
                   (message_id,)).fetchone()
    return None if r is None else _row(r)


def record(db: sqlite3.Connection, rev: Revision) -> bool:
    """Add ``rev`` inside the caller's transaction if it is higher than the message's latest; whether it was."""
    if rev.revision < 1:
        raise ValueError(f"revisions count from 1, got {rev.revision}")
    cur = db.execute(
        f"INSERT INTO revisions ({_COLS}) SELECT ?, ?, ?, ?, ?, ?, ?, ? "
        "WHERE ? > (SELECT COALESCE(MAX(revision), 0) FROM revisions WHERE message_id=?)",
        (rev.message_id, rev.revision, int(rev.complete), rev.frames_used, rev.frames_data, rev.layers,
         rev.layers_total, rev.written_at, rev.revision, rev.message_id),
    )
    return cur.rowcount == 1


def histories(db: sqlite3.Connection, message_ids: Iterable[int]) -> dict[int, list[Revision]]:
    """Every recorded revision of each of ``message_ids``, oldest first (messages without any are left out)."""
    ids = list(dict.fromkeys(int(m) for m in message_ids))
    out: dict[int, list[Revision]] = {}
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for r in db.execute(f"SELECT {_COLS} FROM revisions WHERE message_id IN ({marks}) "
                            "ORDER BY message_id, revision", chunk):
            out.setdefault(int(r[0]), []).append(_row(r))
    return out


def count(db: sqlite3.Connection, complete: bool | None = None) -> int:
    """How many revisions are recorded (only previews, or only complete pictures, when ``complete`` says)."""
    if complete is None:
        return int(db.execute("SELECT COUNT(*) FROM revisions").fetchone()[0])
    return int(db.execute("SELECT COUNT(*) FROM revisions WHERE complete=?", (int(complete),)).fetchone()[0])
