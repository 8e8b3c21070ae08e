"""The sender spool's state machine, without sockets: one frame shape in and out, filters in SQL."""

from __future__ import annotations

import pytest

from gateway.errors import StoreError
from gateway.store.spool import Spool
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import split_message


def test_accept_encode_fly_deliver_and_reopen(tmp_path):
    sp = Spool(tmp_path / "s.db")
    mid = sp.accept(b"imagebytes", "a.png", priority=3, codec="webp", packets=4)
    assert 0 <= mid < 2**32
    assert sp.get(mid).state == "accepted"
    frames = split_message(mid, bytes(range(256)) * 3, FrameCodec(450), parity=1)
    meta = Frame(FrameType.META, mid, 0, frames[0].k, frames[0].n, b"meta")
    sp.mark_encoded(mid, b"bits", {"q": 1}, frames, meta)
    sp.mark_in_flight(mid)
    sp.record_acks(mid, [1])
    sp.close()
    sp = Spool(tmp_path / "s.db")  # a restart sees exactly the committed state
    row = sp.get(mid)
    assert (row.state, row.k, row.n, row.priority) == ("in_flight", 2, 3, 3)
    assert sp.frames(mid) == frames  # the very frames the packetizer made, parity included
    assert sp.meta_frame(mid) == meta and sp.acked(mid) == frozenset({1})
    assert sp.bitstream(mid) == b"bits"
    sp.mark_delivered(mid)
    assert sp.get(mid).state == "delivered"
    assert sp.frames(mid) == []
    with pytest.raises(StoreError):
        sp.mark_failed(mid, "too late")  # terminal states stay terminal
    assert sp.counts()["delivered"] == 1


def test_illegal_transitions_and_unknown_ids(tmp_path):
    sp = Spool(tmp_path / "s.db")
    mid = sp.accept(b"x", "x.png")
    with pytest.raises(StoreError):
        sp.mark_in_flight(mid)  # not encoded yet
    with pytest.raises(StoreError):
        sp.get(12345 if mid != 12345 else 54321)
    sp.mark_failed(mid, "BudgetError: needs 9 frames")
    row = sp.get(mid)
    assert row.state == "failed" and "9 frames" in row.reason
    sp.mark_expired  # noqa: B018  (exists; covered by the daemon tests)


def test_ids_are_unique_and_only_active_jobs_are_found_by_source(tmp_path):
    import hashlib

    sp = Spool(tmp_path / "s.db", synchronous="NORMAL")
    ids = {sp.accept(bytes([i]), f"{i}.png") for i in range(200)}
    assert len(ids) == 200
    seven = sp.find_active_by_source("7.png", hashlib.sha256(bytes([7])).hexdigest())
    assert seven in ids
    assert sp.find_active_by_source("7.png", "0" * 64) is None
    sp.mark_failed(seven, "bad")  # a finished job does not stop a resubmission of the same file
    assert sp.find_active_by_source("7.png", hashlib.sha256(bytes([7])).hexdigest()) is None


def test_a_repeated_request_finds_its_job_instead_of_making_a_second(tmp_path):
    sp = Spool(tmp_path / "s.db", synchronous="NORMAL")
    first = sp.accept(b"img", "a.png", request_id="c0ffee" * 5)
    assert sp.accept(b"img", "a.png", request_id="c0ffee" * 5) == first
    assert sp.find_request("c0ffee" * 5) == first
    other = sp.accept(b"img", "a.png", request_id="beef")
    plain = sp.accept(b"img", "a.png")
    assert len({first, other, plain}) == 3 and sp.counts()["accepted"] == 3


def test_an_old_spool_without_request_ids_is_upgraded_in_place(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "s.db")
    old.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, state TEXT NOT NULL, priority INTEGER NOT NULL, "
        "codec TEXT NOT NULL, packets INTEGER NOT NULL, parity INTEGER NOT NULL, source_name TEXT NOT NULL, "
        "sha256 TEXT NOT NULL, image BLOB, image_size INTEGER NOT NULL, accepted_at REAL NOT NULL, encoded_at REAL, "
        "first_sent_at REAL, done_at REAL, reason TEXT, bitstream BLOB, knobs TEXT, k INTEGER, n INTEGER, meta BLOB);"
        "INSERT INTO messages VALUES (5, 'accepted', 0, 'webp', 3, 0, 'x.png', 'aa', x'00', 1, 1.0, "
        "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
    )
    old.close()
    sp = Spool(tmp_path / "s.db")
    assert sp.get(5).state == "accepted"
    mid = sp.accept(b"y", "y.png", request_id="r1")
    assert sp.accept(b"y", "y.png", request_id="r1") == mid


def test_held_jobs_wait_for_the_ground_and_do_not_expire(tmp_path):
    sp = Spool(tmp_path / "s.db", synchronous="NORMAL")
    mid = sp.accept(b"x", "x.png", now=100.0)
    frames = split_message(mid, b"abc", FrameCodec(450))
    sp.mark_encoded(mid, b"abc", {}, frames, Frame(FrameType.META, mid, 0, 1, 1, b""))
    sp.mark_in_flight(mid)
    sp.mark_held(mid)
    assert sp.get(mid).state == "held" and sp.active_count() == 1
    assert sp.accepted_before(1e12) == []  # the ground holds it: no expiry
    sp.mark_in_flight(mid)  # the ground lost it (store wiped): back to sending
    sp.mark_held(mid)
    sp.mark_delivered(mid)
    assert sp.get(mid).state == "delivered"


def test_a_deleted_or_replaced_spool_file_is_noticed_and_its_jobs_can_be_saved(tmp_path):
    path = tmp_path / "s.db"
    sp = Spool(path, synchronous="NORMAL")
    assert sp.created and sp.file_problem() is None
    mid = sp.accept(b"precious", "p.png")
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    assert "was deleted" in (sp.file_problem() or "")
    saved = Spool(sp.save_copy(tmp_path / "rescued.db"))
    assert saved.image(mid) == b"precious"
    path.write_bytes(b"")  # someone put another file there
    assert "was replaced" in (sp.file_problem() or "")


def test_frames_of_another_message_are_refused(tmp_path):
    sp = Spool(tmp_path / "s.db")
    mid = sp.accept(b"x", "x.png")
    other = split_message(mid + 1, b"abc", FrameCodec(450))
    with pytest.raises(StoreError, match="one message"):
        sp.mark_encoded(mid, b"abc", {}, other, Frame(FrameType.META, mid, 0, 1, 1, b""))
    assert sp.get(mid).state == "accepted"


def test_status_and_expiry_queries_filter_in_sql(tmp_path):
    sp = Spool(tmp_path / "s.db", synchronous="NORMAL")
    ids = [sp.accept(bytes([i]), f"{i}.png", now=1000.0 + i) for i in range(10)]
    sp.mark_failed(ids[0], "bad")
    sp.flush_counters({ids[8]: (5, 2)})
    assert [r.id for r in sp.recent(3)] == ids[7:]  # newest three, oldest first
    assert sp.sent_counters([ids[8], ids[9]]) == {ids[8]: (5, 2)}
    assert [r.id for r in sp.accepted_before(1004.0)] == ids[1:4]  # active only, before the cutoff
