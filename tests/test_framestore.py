"""The ground frame store, without sockets: store before ACK, dedup, bounds, and reassembly from it."""

from __future__ import annotations

import pytest

from gateway.errors import StoreError
from gateway.store.framestore import FrameStore
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import assemble, split_message


def test_framestore_stores_before_ack_dedups_and_completes(tmp_path):
    codec = FrameCodec(450)
    data = bytes(range(256)) * 5
    frames = split_message(77, data, codec, parity=1)
    k, n = frames[0].k, frames[0].n
    fs = FrameStore(tmp_path / "f.db")
    res = fs.store_batch(frames[:2] + [frames[0]])
    assert res.counts["stored"] == 2 and res.counts["duplicate"] == 1
    assert fs.ack_state(77).received == frozenset({0, 1})
    fs.close()
    fs = FrameStore(tmp_path / "f.db")  # committed frames survive a restart
    assert fs.ack_state(77).received == frozenset({0, 1})
    res = fs.store_batch([frames[-1], Frame(FrameType.META, 77, 0, k, n, b"m")])
    assert 77 in res.ready
    assert assemble(fs.frames_of(77)) == data  # erasure decoding filled the missing data frame
    fs.mark_assembled(77, data)
    st = fs.ack_state(77)
    assert st.complete
    res = fs.store_batch([frames[2]])  # a late retransmission
    assert res.counts["duplicate"] == 1 and 77 in res.complete_seen
    fs.mark_done(77, {"ok": True})
    assert fs.state(77) == "done" and fs.bitstream(77) is None
    rec = fs.message(77)
    assert (rec.state, rec.k, rec.n, rec.received, rec.repeated, rec.meta, rec.result) == ("done", k, n, 3, 1, b"m",
                                                                                           {"ok": True})
    with pytest.raises(StoreError):
        fs.message(78)


def test_framestore_refuses_inconsistent_and_bounds_pending(tmp_path):
    fs = FrameStore(tmp_path / "f.db", max_pending=3, max_frames_per_message=10)
    ok = Frame(FrameType.DATA, 1, 0, 2, 2, b"a")
    res = fs.store_batch([ok, Frame(FrameType.DATA, 1, 1, 3, 3, b"b"), Frame(FrameType.DATA, 2, 0, 20, 20, b"c")])
    assert res.counts["inconsistent"] == 2  # k/n disagree with the first frame; n above the limit
    for mid in range(10, 20):
        fs.store_batch([Frame(FrameType.DATA, mid, 0, 2, 2, b"x")])
    assert fs.counts()["receiving"] <= 3
