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


def test_ids_are_unique_and_find_by_source(tmp_path):
    import hashlib

    sp = Spool(tmp_path / "s.db", synchronous="NORMAL")
    ids = {sp.accept(bytes([i]), f"{i}.png") for i in range(200)}
    assert len(ids) == 200
    assert sp.find_by_source("7.png", hashlib.sha256(bytes([7])).hexdigest()) in ids
    assert sp.find_by_source("7.png", "0" * 64) is None


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
