"""The sender's durable spool: every accepted image and its frames, in SQLite.

States of a message (each change is one committed transaction)::

    accepted ─▶ encoded ─▶ in_flight ◀─▶ held ─▶ delivered
        │          │           │          │
        └──────────┴───────────┴──────────┴──▶ failed (reason) / expired (reason)

* ``accepted``: the image bytes are in the spool; ``satgw send`` returns.
* ``encoded``: the rate controller produced a bitstream and its frames are stored.
* ``in_flight``: at least one frame went out.
* ``held``: the ground station holds every frame it needs but has not
  written the picture yet (it is decoding, or its disk refused); nothing more
  to send, and no expiry: the ground has it.
* ``delivered``: the ground station says the picture is durably on its disk.
* ``failed``: the job cannot be done (a bad image, or the ground station
  found the bitstream undecodable), with the reason.

A job may carry the client's ``request_id``: a request repeated after a
lost reply finds the job it made the first time and makes no second one.

The spool notices when its file is deleted or replaced under it
(:meth:`Spool.file_problem`), so the sender stops accepting instead of
writing into a file nobody will ever read again.

Frames are kept as the packetizer made them and come back as the same
:class:`~packetizer.frame.Frame` objects (the META frame included), so one
frame shape goes from segmentation through the spool to the wire; they are
packed at send time, so the HMAC key may change in between.

Durability: WAL journal. ``synchronous=FULL`` (the default) fsyncs the WAL on
every commit, so an accepted job survives a power cut as well as kill -9;
``NORMAL`` survives kill -9 of the daemon but may lose the last commits on a
power cut (it is faster). Frame acknowledgements are committed as they
arrive; per-frame send counters live in memory (after a restart unacked frames
are simply sent again, which is what the receiver's frame store absorbs).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gateway.errors import StoreError
from gateway.store import frame_rows, link_state
from gateway.store.frame_rows import FRAME_COLUMNS, read_frames
from gateway.store.readonly import state_counts
from gateway.store.sqlite import add_missing_columns, open_durable_db, store_error, transaction
from packetizer.frame import Frame, FrameType

STATES = ("accepted", "encoded", "in_flight", "held", "delivered", "failed", "expired")
ACTIVE_STATES = ("accepted", "encoded", "in_flight", "held")
#: Active states a job can expire in: a held job is on the ground already.
EXPIRING_STATES = ("accepted", "encoded", "in_flight")
_TRANSITIONS = {
    "accepted": {"encoded", "failed", "expired"},
    "encoded": {"in_flight", "held", "delivered", "failed", "expired"},
    "in_flight": {"held", "delivered", "failed", "expired"},
    "held": {"in_flight", "delivered", "failed"},
    "delivered": set(),
    "failed": set(),
    "expired": set(),
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    state       TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    codec       TEXT NOT NULL,
    packets     INTEGER NOT NULL,
    parity      INTEGER NOT NULL,
    source_name TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    image       BLOB,
    image_size  INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    encoded_at  REAL,
    first_sent_at REAL,
    done_at     REAL,
    reason      TEXT,
    bitstream   BLOB,
    knobs       TEXT,
    k           INTEGER,
    n           INTEGER,
    meta        BLOB,
    request_id  TEXT
);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state);
CREATE INDEX IF NOT EXISTS messages_source ON messages(source_name, sha256);
CREATE TABLE IF NOT EXISTS frames ({FRAME_COLUMNS},
    acked       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    message_id  INTEGER PRIMARY KEY,
    sent        INTEGER NOT NULL DEFAULT 0,
    retransmitted INTEGER NOT NULL DEFAULT 0
);
{link_state.SETTINGS_SCHEMA}
"""
#: Created after the columns an older spool may lack have been added.
_REQUEST_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_request ON messages(request_id) WHERE request_id IS NOT NULL"
)
#: Longest client request id kept (``satgw send`` sends 32 hex characters).
MAX_REQUEST_ID = 64


@dataclass(frozen=True)
class MessageRow:
    """One spool entry without its image and frame blobs."""

    id: int
    state: str
    priority: int
    codec: str
    packets: int
    parity: int
    source_name: str
    image_size: int
    accepted_at: float
    encoded_at: float | None
    done_at: float | None
    reason: str | None
    k: int | None
    n: int | None
    knobs: dict[str, Any] | None


_ROW_COLS = (
    "id, state, priority, codec, packets, parity, source_name, image_size, accepted_at, encoded_at, done_at, "
    "reason, k, n, knobs"
)


def _row(r: tuple) -> MessageRow:
    knobs = json.loads(r[14]) if r[14] else None
    return MessageRow(*r[:14], knobs)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Spool:
    """The sender's SQLite spool. One instance per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        #: Whether this open created the file (an empty spool where one was expected is worth a log line).
        self.created = not self.path.exists()
        self.db = open_durable_db(self.path, synchronous, _SCHEMA, "spool")
        try:
            add_missing_columns(self.db, "messages", {"request_id": "TEXT"})
            self.db.execute(_REQUEST_INDEX)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open spool {self.path}: {e}; check that the file is not corrupt") from e
        self._file_id = _file_id(self.path)

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # --- the file under the spool -----------------------------------------------------------

    def file_problem(self) -> str | None:
        """Why the spool's path no longer names the file this spool has open (deleted, replaced), or None."""
        now = _file_id(self.path)
        if now is None:
            return f"the spool file {self.path} was deleted while the sender was running"
        if now != self._file_id:
            return f"the spool file {self.path} was replaced by another file while the sender was running"
        return None

    def save_copy(self, dest: str | Path) -> Path:
        """Copy the open database (even if its file was deleted) to ``dest`` with SQLite's backup API."""
        dest = Path(dest)
        out = sqlite3.connect(str(dest))
        try:
            self.db.backup(out)
        except sqlite3.Error as e:
            raise store_error(e, f"cannot copy the spool to {dest}") from e
        finally:
            out.close()
        return dest

    def probe_write(self) -> None:
        """One tiny committed write: raises StoreUnavailable while the disk refuses (used to see it recover)."""
        with transaction(self.db, f"spool {self.path}: cannot write"):
            self.db.execute(
                "INSERT INTO settings (key, value) VALUES ('probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (repr(time.time()),),
            )

    # --- the authenticated link's state (docs/frames.md, Replay window) ----------------------

    def next_epoch(self, now: float | None = None) -> int:
        """This start's epoch for stamping frames (committed)."""
        return link_state.next_epoch(self.db, time.time() if now is None else now)

    def peer_window(self) -> tuple[int, int] | None:
        """The saved state of the window over the ground station's ACK frames."""
        return link_state.load_peer_window(self.db)

    def save_peer_window(self, state: tuple[int, int] | None) -> None:
        """Save the window over the ground station's ACK frames (one commit)."""
        if state is not None:
            with transaction(self.db, f"spool {self.path}: cannot save the ACK window"):
                link_state.save_peer_window(self.db, state)

    # --- acceptance -------------------------------------------------------------------------

    def accept(
        self,
        image: bytes,
        source_name: str,
        *,
        priority: int = 0,
        codec: str = "webp",
        packets: int = 8,
        parity: int = 0,
        now: float | None = None,
        request_id: str | None = None,
    ) -> int:
        """Store a new job durably and return its unique u32 message id.

        Ids are random (not sequential) so a sender whose spool was wiped does not
        reuse ids the ground station already completed. With ``request_id``, a
        job already accepted under it is returned instead of a second one.
        """
        now = time.time() if now is None else now
        if request_id is not None:
            request_id = request_id[:MAX_REQUEST_ID]
            known = self.find_request(request_id)
            if known is not None:
                return known
        digest = hashlib.sha256(image).hexdigest()
        for _ in range(64):
            mid = secrets.randbits(32)
            try:
                with transaction(self.db, f"spool {self.path}: cannot store the job"):
                    self.db.execute(
                        "INSERT INTO messages (id, state, priority, codec, packets, parity, source_name, sha256, "
                        "image, image_size, accepted_at, request_id) "
                        "VALUES (?, 'accepted', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (mid, priority, codec, packets, parity, source_name, digest, image, len(image), now,
                         request_id),
                    )
                return mid
            except StoreError as e:
                if not isinstance(e.__cause__, sqlite3.IntegrityError):
                    raise
                known = self.find_request(request_id) if request_id is not None else None
                if known is not None:
                    return known
                continue  # id collision: draw again
        raise StoreError("could not draw an unused message id in 64 tries; the spool is nearly full of u32 ids")

    def find_request(self, request_id: str) -> int | None:
        """Id of the job a client request with ``request_id`` made, if any."""
        r = self._read("SELECT id FROM messages WHERE request_id=?", (request_id[:MAX_REQUEST_ID],)).fetchone()
        return None if r is None else int(r[0])

    def find_active_by_source(self, source_name: str, sha256: str) -> int | None:
        """Id of a job from the same file name and content that is still on its way (not finished), if any."""
        q = ",".join("?" * len(ACTIVE_STATES))
        r = self._read(
            f"SELECT id FROM messages WHERE source_name=? AND sha256=? AND state IN ({q}) LIMIT 1",
            (source_name, sha256, *ACTIVE_STATES),
        ).fetchone()
        return None if r is None else int(r[0])

    def _read(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as e:
            raise store_error(e, f"spool {self.path}: cannot read") from e

    # --- reads ------------------------------------------------------------------------------

    def get(self, message_id: int) -> MessageRow:
        """The spool entry of ``message_id`` (StoreError if unknown)."""
        r = self.db.execute(f"SELECT {_ROW_COLS} FROM messages WHERE id=?", (message_id,)).fetchone()
        if r is None:
            raise StoreError(f"message {message_id} is not in the spool")
        return _row(r)

    def list(self, states: Iterable[str] | None = None, limit: int = 1000) -> list[MessageRow]:
        """Entries (optionally only in ``states``), oldest first."""
        if states is None:
            rows = self.db.execute(f"SELECT {_ROW_COLS} FROM messages ORDER BY accepted_at LIMIT ?", (limit,))
        else:
            st = tuple(states)
            q = ",".join("?" * len(st))
            rows = self.db.execute(
                f"SELECT {_ROW_COLS} FROM messages WHERE state IN ({q}) ORDER BY accepted_at LIMIT ?", (*st, limit)
            )
        return [_row(r) for r in rows.fetchall()]

    def recent(self, limit: int = 200) -> list[MessageRow]:
        """The ``limit`` most recently accepted entries, oldest first (for status displays)."""
        rows = self.db.execute(
            f"SELECT {_ROW_COLS} FROM (SELECT * FROM messages ORDER BY accepted_at DESC LIMIT ?) ORDER BY accepted_at",
            (limit,),
        )
        return [_row(r) for r in rows.fetchall()]

    def accepted_before(self, cutoff: float, limit: int = 1000) -> list[MessageRow]:
        """Entries not yet on the ground accepted before ``cutoff`` (wall time), oldest first: the ones to expire."""
        q = ",".join("?" * len(EXPIRING_STATES))
        rows = self.db.execute(
            f"SELECT {_ROW_COLS} FROM messages WHERE state IN ({q}) AND accepted_at < ? ORDER BY accepted_at LIMIT ?",
            (*EXPIRING_STATES, cutoff, limit),
        )
        return [_row(r) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        """Number of messages per state (every state present, zero included)."""
        return state_counts(self.db, STATES)

    def active_count(self) -> int:
        """Messages not yet delivered, failed or expired."""
        q = ",".join("?" * len(ACTIVE_STATES))
        return int(self.db.execute(f"SELECT COUNT(*) FROM messages WHERE state IN ({q})", ACTIVE_STATES).fetchone()[0])

    def image(self, message_id: int) -> bytes:
        """The accepted image bytes of ``message_id``."""
        r = self.db.execute("SELECT image FROM messages WHERE id=?", (message_id,)).fetchone()
        if r is None or r[0] is None:
            raise StoreError(f"message {message_id} has no image in the spool")
        return bytes(r[0])

    def bitstream(self, message_id: int) -> bytes:
        """The encoded bitstream of ``message_id``."""
        r = self.db.execute("SELECT bitstream FROM messages WHERE id=?", (message_id,)).fetchone()
        if r is None or r[0] is None:
            raise StoreError(f"message {message_id} has not been encoded")
        return bytes(r[0])

    def meta_frame(self, message_id: int) -> Frame | None:
        """The META frame of ``message_id`` (None before encoding)."""
        r = self.db.execute("SELECT meta, k, n FROM messages WHERE id=?", (message_id,)).fetchone()
        if r is None or r[0] is None:
            return None
        return Frame(FrameType.META, message_id, 0, int(r[1]), int(r[2]), bytes(r[0]))

    def frames(self, message_id: int) -> list[Frame]:
        """The DATA and PARITY frames of ``message_id`` in index order, as the packetizer made them."""
        kn = self.db.execute("SELECT k, n FROM messages WHERE id=?", (message_id,)).fetchone()
        if kn is None or kn[0] is None:
            return []
        return read_frames(self.db, message_id, int(kn[0]), int(kn[1]))

    def acked(self, message_id: int) -> frozenset[int]:
        """Indices of the frames of ``message_id`` the ground station has acknowledged."""
        rows = self.db.execute("SELECT idx FROM frames WHERE message_id=? AND acked=1", (message_id,))
        return frozenset(int(r[0]) for r in rows)

    def sent_counters(self, message_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(frames sent, frames retransmitted) as last flushed, for each of ``message_ids`` that has any."""
        ids = tuple(message_ids)
        if not ids:
            return {}
        q = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT message_id, sent, retransmitted FROM counters WHERE message_id IN ({q})", ids)
        return {int(m): (int(s), int(r)) for m, s, r in rows}

    # --- state changes ----------------------------------------------------------------------

    def _transition(self, message_id: int, new: str, sets: str = "", args: tuple = ()) -> None:
        r = self.db.execute("SELECT state FROM messages WHERE id=?", (message_id,)).fetchone()
        if r is None:
            raise StoreError(f"message {message_id} is not in the spool")
        old = r[0]
        if new not in _TRANSITIONS[old]:
            raise StoreError(f"message {message_id}: cannot go from {old} to {new}")
        self.db.execute(f"UPDATE messages SET state=?{sets} WHERE id=?", (new, *args, message_id))

    def mark_encoded(
        self,
        message_id: int,
        bitstream: bytes,
        knobs: dict[str, Any],
        frames: list[Frame],
        meta: Frame,
        now: float | None = None,
    ) -> None:
        """Store the bitstream, its DATA/PARITY ``frames`` and its ``meta`` frame; accepted -> encoded.

        The image bytes are kept until delivery so a failed message can be inspected.
        """
        now = time.time() if now is None else now
        if not frames or any((f.message_id, f.k, f.n) != (message_id, frames[0].k, frames[0].n) for f in frames):
            raise StoreError(f"message {message_id}: frames to spool must be one message's, with one k and n")
        k, n = frames[0].k, frames[0].n
        with transaction(self.db, f"spool {self.path}: cannot store frames of {message_id}"):
            self._transition(
                message_id,
                "encoded",
                ", bitstream=?, knobs=?, k=?, n=?, meta=?, encoded_at=?",
                (bitstream, json.dumps(knobs), k, n, meta.payload, now),
            )
            self.db.execute("DELETE FROM frames WHERE message_id=?", (message_id,))
            self.db.executemany(frame_rows.INSERT, [frame_rows.row(f) for f in frames])

    def mark_in_flight(self, message_id: int, now: float | None = None) -> None:
        """encoded or held -> in_flight (first frame sent, or the ground station lost what it held)."""
        now = time.time() if now is None else now
        with transaction(self.db, f"spool {self.path}: cannot record message {message_id} in flight"):
            self._transition(message_id, "in_flight", ", first_sent_at=COALESCE(first_sent_at, ?)", (now,))

    def mark_held(self, message_id: int) -> None:
        """-> held: the ground station holds every frame it needs; the picture is not written yet."""
        with transaction(self.db, f"spool {self.path}: cannot record message {message_id} held"):
            self._transition(message_id, "held")

    def record_acks(self, message_id: int, indices: Iterable[int]) -> None:
        """Mark frames of ``message_id`` acknowledged by the ground station (committed)."""
        idx = [(message_id, int(i)) for i in indices]
        if not idx:
            return
        with transaction(self.db, f"spool {self.path}: cannot record ACKs of {message_id}"):
            self.db.executemany("UPDATE frames SET acked=1 WHERE message_id=? AND idx=?", idx)

    def mark_delivered(self, message_id: int, now: float | None = None) -> None:
        """The ground station has written the picture: drop its image and frames, keep the record."""
        now = time.time() if now is None else now
        with transaction(self.db, f"spool {self.path}: cannot record message {message_id} delivered"):
            self._transition(message_id, "delivered", ", done_at=?, image=NULL", (now,))
            self.db.execute("DELETE FROM frames WHERE message_id=?", (message_id,))

    def mark_failed(self, message_id: int, reason: str, now: float | None = None) -> None:
        """Any active state -> failed, with a reason for the operator."""
        self._finish(message_id, "failed", reason, now)

    def mark_expired(self, message_id: int, reason: str, now: float | None = None) -> None:
        """Any active state -> expired (TTL passed), with a reason."""
        self._finish(message_id, "expired", reason, now)

    def _finish(self, message_id: int, state: str, reason: str, now: float | None) -> None:
        now = time.time() if now is None else now
        with transaction(self.db, f"spool {self.path}: cannot record message {message_id} {state}"):
            self._transition(message_id, state, ", done_at=?, reason=?", (now, reason))
            self.db.execute("DELETE FROM frames WHERE message_id=?", (message_id,))

    def flush_counters(self, counters: dict[int, tuple[int, int]]) -> None:
        """Persist per-message (sent, retransmitted) counters for status displays (one commit)."""
        if not counters:
            return
        with transaction(self.db, f"spool {self.path}: cannot save counters"):
            self.db.executemany(
                "INSERT INTO counters (message_id, sent, retransmitted) VALUES (?, ?, ?) "
                "ON CONFLICT(message_id) DO UPDATE SET sent=excluded.sent, retransmitted=excluded.retransmitted",
                [(m, s, r) for m, (s, r) in counters.items()],
            )
