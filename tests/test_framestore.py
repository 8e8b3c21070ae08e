"""The ground frame store, without sockets: store before ACK, dedup, bounds, and reassembly from it."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import StoreError, StoreUnavailable
from gateway.store.framestore import FrameStore
from packetizer.ack import AckStatus
from packetizer.errors import ReassemblyError
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
    assert st.status == AckStatus.HELD and not st.complete  # held, not delivered: the picture is not written
    assert fs.bitstream(77) == data
    res = fs.store_batch([frames[2]])  # a late retransmission
    assert res.counts["duplicate"] == 1 and 77 in res.complete_seen
    fs.mark_done(77, {"ok": True})
    assert fs.state(77) == "done" and fs.bitstream(77) is None and fs.ack_state(77).complete
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


def _ground_path(fs: FrameStore, frames: list[Frame], batch: int = 7) -> list[bytes]:
    """What the receiver does with arriving frames: verify, store a batch, assemble whatever became ready."""
    out = []
    for i in range(0, len(frames), batch):
        res = fs.store_batch([CODEC.unpack(CODEC.pack(f)) for f in frames[i : i + batch]])
        for mid in sorted(res.ready):
            data = fs.assemble(mid)
            if data is not None:
                out.append(data)
    return out


CODEC = FrameCodec()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 12), st.integers(0, 3))
def test_interleaved_messages_each_come_out_exactly_once(seed: int, count: int, parity: int) -> None:
    rnd = random.Random(seed)
    messages = {mid: rnd.randbytes(rnd.randint(0, 20_000)) for mid in rnd.sample(range(2**32), count)}
    frames: list[Frame] = []
    for mid, message in messages.items():
        own = split_message(mid, message, CODEC, parity)
        frames += rnd.sample(own, len(own) - rnd.randint(0, parity))  # lose up to `parity` frames
    frames += [rnd.choice(frames) for _ in range(len(frames) // 2)]  # duplicates and retransmissions
    rnd.shuffle(frames)
    with tempfile.TemporaryDirectory() as d:
        fs = FrameStore(Path(d) / "f.db", synchronous="NORMAL")
        assert sorted(_ground_path(fs, frames)) == sorted(messages.values())
        assert fs.counts()["assembled"] == count and fs.counts()["receiving"] == 0
        for mid, message in messages.items():
            assert fs.ack_state(mid).status == AckStatus.HELD
            # everything after completion is a late duplicate: no second copy, a complete ACK instead
            res = fs.store_batch(split_message(mid, message, CODEC, parity))
            assert not res.ready and mid in res.complete_seen and fs.assemble(mid) is None
        fs.close()


def test_parity_fills_a_lost_data_frame(tmp_path):
    data = bytes(range(256)) * 10
    frames = split_message(8, data, CODEC, parity=2)
    fs = FrameStore(tmp_path / "f.db")
    assert _ground_path(fs, frames[1:], batch=1) == [data]
    assert fs.message(8).received == len(frames) - 2  # assembled at k frames; the last one came late


def test_contradicting_frames_are_counted_not_stored_and_bad_sets_fail_assembly(tmp_path):
    fs = FrameStore(tmp_path / "f.db")
    a = split_message(1, bytes(3000), CODEC, parity=1)
    fs.store_batch([a[0]])
    res = fs.store_batch([split_message(1, bytes(9000), CODEC)[1],  # reused id, other counts
                          dataclasses.replace(a[0], payload=b"x" * 432),  # same index, other bytes: first wins
                          Frame(FrameType.ACK, 1, 0, 1, 1, b"")])
    assert (res.counts["inconsistent"], res.counts["duplicate"], res.counts["unexpected_ack"]) == (1, 1, 1)
    assert fs.ack_state(1).received == frozenset({0})
    short = dataclasses.replace(a[1], payload=a[1].payload[:100])  # a middle block shorter than the others
    fs.store_batch([short, *a[2:]])
    with pytest.raises(ReassemblyError):
        fs.assemble(1)
    assert fs.state(1) == "receiving"  # nothing committed; the daemon fails the message with the reason


def test_a_failed_message_is_acknowledged_failed_with_its_reason(tmp_path):
    fs = FrameStore(tmp_path / "f.db")
    fs.store_batch(split_message(5, b"x" * 10, CODEC))
    fs.mark_assembled(5, fs.assemble(5) or b"")
    fs.mark_failed(5, "BitstreamError: unknown codec id 9")
    st = fs.ack_state(5)
    assert (st.status, st.reason, st.received) == (AckStatus.FAILED, "BitstreamError: unknown codec id 9", frozenset())


def test_a_full_disk_mid_batch_leaves_store_and_index_as_they_were(tmp_path):
    # Before: SQLite rolled the transaction back itself, the store's own ROLLBACK then failed with
    # "cannot rollback - no transaction is active", the index was never reloaded and drifted from the database.
    fs = FrameStore(tmp_path / "f.db")
    fs.store_batch([Frame(FrameType.DATA, 1, 0, 2, 2, b"a" * 400)])
    pages = fs.db.execute("PRAGMA page_count").fetchone()[0]
    fs.db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full: no page more
    big = [Frame(FrameType.DATA, mid, 0, 1, 1, bytes([mid]) * 400) for mid in range(100, 140)]
    with pytest.raises(StoreUnavailable, match="disk is full"):
        fs.store_batch(big)
    assert fs.state(100) is None and fs.counts()["receiving"] == 1
    assert fs.ack_state(1).received == frozenset({0})
    fs.db.execute("PRAGMA max_page_count=1073741823")  # space returns
    res = fs.store_batch(big + [Frame(FrameType.DATA, 1, 1, 2, 2, b"b" * 400)])
    assert res.counts["stored"] == 41 and res.ready == set(range(100, 140)) | {1}


def test_evicted_messages_are_reported_and_the_peer_window_survives_a_restart(tmp_path):
    fs = FrameStore(tmp_path / "f.db", max_pending=2)
    fs.store_batch([Frame(FrameType.DATA, 1, 0, 2, 2, b"a")], now=1.0)
    fs.store_batch([Frame(FrameType.DATA, 2, 0, 2, 2, b"a")], now=2.0)
    res = fs.store_batch([Frame(FrameType.DATA, 3, 0, 2, 2, b"a")], now=3.0, peer_window=(1700000000, 41))
    assert res.evicted == {1}
    first = fs.next_epoch(now=5000.0)
    assert fs.next_epoch(now=5000.0) == first + 1  # two starts in one second still get growing epochs
    fs.close()
    fs = FrameStore(tmp_path / "f.db")
    assert fs.peer_window() == (1700000000, 41)
    assert fs.next_epoch(now=10.0) == first + 2  # a clock that went back does not reuse an epoch
