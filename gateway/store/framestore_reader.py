"""The frame store read from beside the ground station: messages arriving, failed, and counts by state.

For the web page, which must never write: every query goes through a
read-only connection (:func:`gateway.store.readonly.open_readonly`) opened per
call, so it sees the latest commit and holds no lock between calls. A frame
store that does not exist yet reads as empty.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.store import revisions as revision_rows
from gateway.store.framestore import STATES
from gateway.store.readonly import open_readonly, state_counts
from gateway.store.revisions import Revision


@dataclass(frozen=True)
class MessageSummary:
    """One message's row without its frames and bitstream (``meta``: the raw, untrusted META payload)."""

    id: int
    state: str
    k: int
    n: int
    received: int
    repeated: int
    first_at: float
    last_at: float
    done_at: float | None
    reason: str | None
    meta: bytes | None


_COLS = "id, state, k, n, received, repeated, first_at, last_at, done_at, reason, meta"


def _summary(r: tuple) -> MessageSummary:
    return MessageSummary(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]), float(r[7]),
                          r[8], r[9], None if r[10] is None else bytes(r[10]))


class FrameStoreReader:
    """Read-only queries on the frame store at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        db = open_readonly(self.path)
        if db is None:
            return []
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # the daemon has not created its tables yet
        finally:
            db.close()

    def counts(self) -> dict[str, int]:
        """Messages per state (all zero while the store does not exist)."""
        db = open_readonly(self.path)
        if db is None:
            return dict.fromkeys(STATES, 0)
        try:
            return state_counts(db, STATES)
        except sqlite3.OperationalError:
            return dict.fromkeys(STATES, 0)
        finally:
            db.close()

    def in_progress(self, limit: int) -> list[MessageSummary]:
        """Messages still arriving or waiting to be decoded, most recently active first."""
        rows = self._query(f"SELECT {_COLS} FROM messages WHERE state IN ('receiving', 'assembled') "
                           "ORDER BY last_at DESC LIMIT ?", (limit,))
        return [_summary(r) for r in rows]

    def failed(self, limit: int) -> list[MessageSummary]:
        """Messages that failed, latest first, with their reasons."""
        rows = self._query(f"SELECT {_COLS} FROM messages WHERE state='failed' ORDER BY done_at DESC LIMIT ?", (limit,))
        return [_summary(r) for r in rows]

    def revisions(self, message_ids: list[int]) -> dict[int, list[Revision]]:
        """The revisions written of each message's picture (previews, then the complete one), oldest first."""
        db = open_readonly(self.path)
        if db is None:
            return {}
        try:
            return revision_rows.histories(db, message_ids)
        except sqlite3.OperationalError:
            return {}  # a frame store from before revisions, or tables not created yet
        finally:
            db.close()
