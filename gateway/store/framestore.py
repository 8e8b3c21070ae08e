"""The ground station's durable frame store (SQLite, WAL), and reassembly from it.

Frames are committed here *before* they are acknowledged, so an ACK never
promises something a crash could lose. A message moves through (and is
acknowledged as, :class:`packetizer.ack.AckStatus`)::

    receiving ─▶ assembled ─▶ done                 RECEIVING ─▶ HELD ─▶ DONE
         │            └──────▶ failed (reason)                     └──▶ FAILED
         └──▶ failed (reason: frames do not assemble)

:meth:`FrameStore.assemble` rebuilds a message from its stored frames with
:func:`packetizer.segment.assemble` (erasure decoding included): this is the
ground station's only reassembly path. ``assembled`` keeps the reassembled
bitstream (its frames are dropped in the same transaction) until the
picture is written: ``done`` means ``<id>.png`` and ``<id>.json`` are durably in the
outbox, and only then is the bitstream dropped. ``failed`` is for a bitstream
that is itself bad; a decode the host made fail (disk, memory, bundle) leaves
the message ``assembled`` to be tried again. Rows of finished messages stay
(without blobs) so duplicates and retransmissions are recognized forever and
never produce a second output.

A message whose frames stop coming may be written early as a preview; each
picture written (preview or complete) is a revision recorded in
:mod:`gateway.store.revisions`, the complete one in the same transaction as
the ``done`` state. A preview changes nothing else: the message stays
``receiving`` (acknowledged RECEIVING) until its complete picture is written.

Bounded memory and disk: a message must declare sane ``k``/``n`` before any
frame of it is kept, frames that disagree with the first one seen are
dropped, and at most ``max_pending`` messages may be incomplete at once (the
stalest is evicted first; a sender notices from the ACK bitmap and repeats).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.store import frame_rows, link_state, revisions
from gateway.store.frame_rows import FRAME_COLUMNS, read_frames
from gateway.store.readonly import state_counts
from gateway.store.revisions import Revision
from gateway.store.sqlite import open_durable_db, transaction
from packetizer.ack import AckStatus
from packetizer.frame import Frame, FrameType
from packetizer.segment import assemble

#: A message's states, in the order it moves through them.
STATES = ("receiving", "assembled", "done", "failed")
#: How each message state is acknowledged.
_ACK_STATUS = {"receiving": AckStatus.RECEIVING, "assembled": AckStatus.HELD, "done": AckStatus.DONE,
               "failed": AckStatus.FAILED}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY,
    state        TEXT NOT NULL,
    k            INTEGER NOT NULL,
    n            INTEGER NOT NULL,
    first_at     REAL NOT NULL,
    last_at      REAL NOT NULL,
    assembled_at REAL,
    done_at      REAL,
    received     INTEGER NOT NULL DEFAULT 0,
    repeated     INTEGER NOT NULL DEFAULT 0,
    max_index    INTEGER NOT NULL DEFAULT -1,
    meta         BLOB,
    bitstream    BLOB,
    reason       TEXT,
    result       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state, last_at);
CREATE INDEX IF NOT EXISTS messages_done ON messages(done_at);
CREATE TABLE IF NOT EXISTS frames ({FRAME_COLUMNS},
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
{link_state.SETTINGS_SCHEMA}
{revisions.SCHEMA}
"""


@dataclass
class BatchResult:
    """What one committed batch of frames changed."""

    touched: set[int] = field(default_factory=set)  #: messages that got a new frame or META
    complete_seen: set[int] = field(default_factory=set)  #: frames for messages already assembled/done
    ready: set[int] = field(default_factory=set)  #: receiving messages that now hold >= k frames
    evicted: set[int] = field(default_factory=set)  #: incomplete messages dropped to make room
    late_meta: set[int] = field(default_factory=set)  #: done messages whose META frame came only now
    counts: Counter = field(default_factory=Counter)  #: stored, duplicate, inconsistent, refused, evicted, meta


@dataclass(frozen=True)
class StoredMessage:
    """One message as the frame store knows it: the record the decode worker and the JSON writer read.

    Times are wall-clock seconds; ``received`` counts distinct frames stored,
    ``repeated`` the duplicates that arrived; ``meta`` is the raw META payload
    (untrusted: read it with :meth:`gateway.protocol.meta.MessageMeta.unpack`).
    """

    id: int
    state: str
    k: int
    n: int
    first_at: float
    last_at: float
    assembled_at: float | None
    done_at: float | None
    received: int
    repeated: int
    max_index: int
    meta: bytes | None
    reason: str | None
    result: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True)
class AckState:
    """What to acknowledge for one message: its status, the indices stored while RECEIVING, why it FAILED."""

    message_id: int
    n: int
    received: frozenset[int]
    status: AckStatus
    reason: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the message is delivered (its picture is written)."""
        return self.status == AckStatus.DONE


class FrameStore:
    """SQLite store of received frames and message states. One instance per thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_pending: int = 2000,
        max_frames_per_message: int = 4096,
    ) -> None:
        self.path = Path(path)
        self.max_pending = max_pending
        self.max_n = max_frames_per_message
        self.db = open_durable_db(self.path, synchronous, _SCHEMA, "frame store")
        # In-memory index (message id -> (state, k, n)) so duplicate floods cost no SQL.
        self._msgs: dict[int, list[Any]] = {}
        for mid, state, k, n in self.db.execute("SELECT id, state, k, n FROM messages"):
            self._msgs[int(mid)] = [state, int(k), int(n)]
        self._pending = sum(1 for v in self._msgs.values() if v[0] == "receiving")

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def state(self, message_id: int) -> str | None:
        """State of ``message_id`` or None if never seen."""
        m = self._msgs.get(message_id)
        return None if m is None else m[0]

    def store_batch(
        self, frames: list[Frame], now: float | None = None, peer_window: tuple[int, int] | None = None
    ) -> BatchResult:
        """Validate and durably store DATA, PARITY and META frames in one transaction.

        Returns which messages changed; nothing in the result is acknowledged
        before this method returns (i.e. before the commit). ``peer_window`` (the
        sender's replay window, docs/frames.md) is committed with the frames.
        Raises :class:`StoreError` (:class:`StoreUnavailable` when the disk refuses):
        then nothing was stored and the in-memory index matches the database again.
        """
        now = time.time() if now is None else now
        res = BatchResult()
        try:
            with transaction(self.db, f"frame store {self.path}: cannot store {len(frames)} frames"):
                for f in frames:
                    self._store_one(f, now, res)
                link_state.save_peer_window(self.db, peer_window)
        except BaseException:
            # Roll the in-memory index back to what the database holds.
            self._reload_index()
            raise
        return res

    def _reload_index(self) -> None:
        self._msgs = {int(m): [s, int(k), int(n)] for m, s, k, n in self.db.execute("SELECT id, state, k, n FROM messages")}
        self._pending = sum(1 for v in self._msgs.values() if v[0] == "receiving")

    def _store_one(self, f: Frame, now: float, res: BatchResult) -> None:
        mid = f.message_id
        if f.type == FrameType.ACK:
            res.counts["unexpected_ack"] += 1
            return
        k, n = f.k, f.n
        if not (1 <= k <= n <= self.max_n):
            res.counts["inconsistent"] += 1
            return
        m = self._msgs.get(mid)
        if m is None:
            if self._pending >= self.max_pending:
                self._evict_stalest(res)
            self.db.execute(
                "INSERT INTO messages (id, state, k, n, first_at, last_at) VALUES (?, 'receiving', ?, ?, ?, ?)",
                (mid, k, n, now, now),
            )
            m = self._msgs[mid] = ["receiving", k, n]
            self._pending += 1
        state, mk, mn = m
        if (k, n) != (mk, mn):
            res.counts["inconsistent"] += 1
            return
        if f.type == FrameType.META:
            if state in ("receiving", "assembled", "done"):
                cur = self.db.execute("UPDATE messages SET meta=? WHERE id=? AND meta IS NULL", (f.payload, mid))
                if cur.rowcount:
                    res.touched.add(mid)
                    res.counts["meta"] += 1
                    if state == "receiving" and self._have(mid) >= k:
                        res.ready.add(mid)
                    elif state == "done":
                        res.late_meta.add(mid)  # came after the grace period: the record gets its name now
                    return
            res.counts["duplicate"] += 1
            if state != "receiving":
                res.complete_seen.add(mid)
            return
        if state != "receiving":
            res.counts["duplicate"] += 1
            res.complete_seen.add(mid)
            return
        cur = self.db.execute(frame_rows.INSERT_NEW, frame_rows.row(f))
        if cur.rowcount == 0:
            res.counts["duplicate"] += 1
            self.db.execute("UPDATE messages SET repeated=repeated+1, last_at=? WHERE id=?", (now, mid))
            res.touched.add(mid)  # re-ACK: the sender evidently missed our last ACK
            return
        res.counts["stored"] += 1
        self.db.execute(
            "UPDATE messages SET received=received+1, last_at=?, max_index=MAX(max_index, ?) WHERE id=?",
            (now, f.index, mid),
        )
        res.touched.add(mid)
        if self._have(mid) >= k:
            res.ready.add(mid)

    def _have(self, mid: int) -> int:
        return int(self.db.execute("SELECT received FROM messages WHERE id=?", (mid,)).fetchone()[0])

    def _evict_stalest(self, res: BatchResult) -> None:
        r = self.db.execute("SELECT id FROM messages WHERE state='receiving' ORDER BY last_at LIMIT 1").fetchone()
        if r is None:
            return
        mid = int(r[0])
        self.db.execute("DELETE FROM frames WHERE message_id=?", (mid,))
        self.db.execute("DELETE FROM messages WHERE id=?", (mid,))
        self._msgs.pop(mid, None)
        self._pending -= 1
        res.counts["evicted"] += 1
        res.evicted.add(mid)

    def frames_of(self, message_id: int) -> list[Frame]:
        """Stored DATA/PARITY frames of a receiving message, as :class:`Frame` objects."""
        m = self._msgs.get(message_id)
        if m is None:
            return []
        _, k, n = m
        return read_frames(self.db, message_id, k, n)

    def message(self, message_id: int) -> StoredMessage:
        """The record of ``message_id`` (everything but its frames and bitstream)."""
        r = self.db.execute(
            "SELECT id, state, k, n, first_at, last_at, assembled_at, done_at, received, repeated, max_index, "
            "meta, reason, result, attempts FROM messages WHERE id=?",
            (message_id,),
        ).fetchone()
        if r is None:
            raise StoreError(f"message {message_id} is not in the frame store")
        return StoredMessage(
            id=int(r[0]), state=r[1], k=int(r[2]), n=int(r[3]), first_at=float(r[4]), last_at=float(r[5]),
            assembled_at=r[6], done_at=r[7], received=int(r[8]), repeated=int(r[9]), max_index=int(r[10]),
            meta=None if r[11] is None else bytes(r[11]), reason=r[12],
            result=json.loads(r[13]) if r[13] else None, attempts=int(r[14]),
        )

    def has_meta(self, message_id: int) -> bool:
        """Whether the META frame of ``message_id`` has arrived."""
        r = self.db.execute("SELECT meta IS NOT NULL FROM messages WHERE id=?", (message_id,)).fetchone()
        return bool(r and r[0])

    def bitstream(self, message_id: int) -> bytes | None:
        """The reassembled bitstream of an assembled message."""
        r = self.db.execute("SELECT bitstream FROM messages WHERE id=?", (message_id,)).fetchone()
        return None if r is None or r[0] is None else bytes(r[0])

    def assemble(self, message_id: int, now: float | None = None) -> bytes | None:
        """Rebuild a receiving message from its stored frames and commit it as assembled.

        Returns the bitstream, or None while fewer than k distinct frames are
        stored (or the message is not receiving). Erasure decoding fills in
        missing data frames. Raises :class:`packetizer.errors.PacketizerError`
        when the stored frames do not make one consistent message.
        """
        if self.state(message_id) != "receiving":
            return None
        data = assemble(self.frames_of(message_id))
        if data is not None:
            self.mark_assembled(message_id, data, now)
        return data

    def mark_assembled(self, message_id: int, bitstream: bytes, now: float | None = None) -> None:
        """receiving -> assembled: keep the bitstream, drop the frames (one commit)."""
        now = time.time() if now is None else now
        with transaction(self.db, f"frame store {self.path}: cannot commit assembled message {message_id}"):
            self.db.execute(
                "UPDATE messages SET state='assembled', bitstream=?, assembled_at=? WHERE id=? AND state='receiving'",
                (bitstream, now, message_id),
            )
            self.db.execute("DELETE FROM frames WHERE message_id=?", (message_id,))
        self._set_state(message_id, "assembled")

    def note_attempt(self, message_id: int) -> int:
        """Count one decode attempt (committed before decoding); returns the count so far.

        An attempt that ends with an answer the host is to blame for is given back
        (:meth:`release_attempt`): the count is of decodes that crashed or hung.
        """
        with transaction(self.db, f"frame store {self.path}: cannot count a decode attempt of {message_id}"):
            self.db.execute("UPDATE messages SET attempts=attempts+1 WHERE id=?", (message_id,))
        return int(self.db.execute("SELECT attempts FROM messages WHERE id=?", (message_id,)).fetchone()[0])

    def release_attempt(self, message_id: int) -> None:
        """Give back the attempt counted for a decode that failed for a reason of the host."""
        with transaction(self.db, f"frame store {self.path}: cannot update message {message_id}"):
            self.db.execute("UPDATE messages SET attempts=MAX(attempts-1, 0) WHERE id=?", (message_id,))

    def mark_done(self, message_id: int, result: dict[str, Any], now: float | None = None,
                  revision: Revision | None = None) -> None:
        """assembled -> done: the picture and its record are durably written; only now is the bitstream dropped.

        ``revision`` (the complete picture's) is recorded in the same transaction.
        """
        now = time.time() if now is None else now
        with transaction(self.db, f"frame store {self.path}: cannot record message {message_id} done"):
            cur = self.db.execute(
                "UPDATE messages SET state='done', done_at=?, result=?, bitstream=NULL WHERE id=? AND state='assembled'",
                (now, json.dumps(result, default=str), message_id),
            )
            if revision is not None and cur.rowcount:
                revisions.record(self.db, revision)
        self._set_state(message_id, "done")

    def record_preview(self, revision: Revision) -> bool:
        """Record a preview written to the outbox (one commit); False when it is not above the latest revision.

        The message's state does not change: it is still being received.
        """
        with transaction(self.db, f"frame store {self.path}: cannot record a preview of {revision.message_id}"):
            return revisions.record(self.db, revision)

    def latest_revision(self, message_id: int) -> Revision | None:
        """The last revision of ``message_id``'s picture recorded as written, or None."""
        return revisions.latest(self.db, message_id)

    def revision_history(self, message_id: int) -> list[Revision]:
        """Every revision of ``message_id``'s picture recorded, oldest first."""
        return revisions.histories(self.db, [message_id]).get(message_id, [])

    def mark_failed(self, message_id: int, reason: str, now: float | None = None) -> None:
        """receiving/assembled -> failed with a reason (ACKed FAILED: resending cannot help)."""
        now = time.time() if now is None else now
        with transaction(self.db, f"frame store {self.path}: cannot record message {message_id} failed"):
            self.db.execute(
                "UPDATE messages SET state='failed', done_at=?, reason=?, bitstream=NULL WHERE id=?",
                (now, reason, message_id),
            )
            self.db.execute("DELETE FROM frames WHERE message_id=?", (message_id,))
        self._set_state(message_id, "failed")

    def _set_state(self, message_id: int, state: str) -> None:
        m = self._msgs.get(message_id)
        if m is not None:
            if m[0] == "receiving" and state != "receiving":
                self._pending -= 1
            m[0] = state

    def ack_state(self, message_id: int) -> AckState | None:
        """What to acknowledge for ``message_id`` (None if unknown)."""
        m = self._msgs.get(message_id)
        if m is None:
            return None
        state, _, n = m
        status = _ACK_STATUS[state]
        if status == AckStatus.FAILED:
            r = self.db.execute("SELECT reason FROM messages WHERE id=?", (message_id,)).fetchone()
            return AckState(message_id, n, frozenset(), status, r[0] if r else None)
        if status != AckStatus.RECEIVING:
            return AckState(message_id, n, frozenset(), status)
        idx = frozenset(int(r[0]) for r in self.db.execute("SELECT idx FROM frames WHERE message_id=?", (message_id,)))
        return AckState(message_id, n, idx, status)

    def with_state(self, state: str) -> list[int]:
        """Ids of messages in ``state``, oldest activity first."""
        return [int(r[0]) for r in self.db.execute("SELECT id FROM messages WHERE state=? ORDER BY last_at", (state,))]

    def active_since(self, t: float, finished_since: float | None = None) -> list[int]:
        """Messages to acknowledge again (periodic ACKs): receiving ones with a frame since ``t``, and
        ones finished (done or failed) since ``finished_since``, so a lost DONE or FAILED is repeated."""
        rows = self.db.execute(
            "SELECT id FROM messages WHERE state='receiving' AND last_at>=? "
            "UNION SELECT id FROM messages WHERE done_at>=?",
            (t, float("inf") if finished_since is None else finished_since),
        )
        return [int(r[0]) for r in rows]

    # --- the authenticated link's state (docs/frames.md, Replay window) ----------------------

    def next_epoch(self, now: float | None = None) -> int:
        """This start's epoch for stamping ACK frames (committed)."""
        return link_state.next_epoch(self.db, time.time() if now is None else now)

    def peer_window(self) -> tuple[int, int] | None:
        """The saved state of the window over the sender's frames (committed with every batch)."""
        return link_state.load_peer_window(self.db)

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        return state_counts(self.db, STATES)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recently active messages, for status displays (with the last revision written, if any)."""
        cur = self.db.execute(
            "SELECT id, state, k, n, received, repeated, reason FROM messages ORDER BY last_at DESC LIMIT ?", (limit,)
        )
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        latest = revisions.histories(self.db, [r["id"] for r in rows])
        for r in rows:
            revs = latest.get(r["id"])
            r["revision"] = revs[-1].as_dict() if revs else None
        return rows

    def preview_count(self) -> int:
        """Previews recorded as written (revisions that are not complete pictures), ever."""
        return revisions.count(self.db, complete=False)
