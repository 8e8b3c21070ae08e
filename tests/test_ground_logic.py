"""The ground station's pure logic: META waits (bounded, expiring), decode retries (backoff), the fault board."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.daemon.faults import FaultBoard
from gateway.ground.meta_waits import MetaWaits
from gateway.ground.retries import DecodeRetries
from gateway.transport.eventlog import EventLog


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.lists(st.tuples(st.sampled_from(["start", "discard", "due"]), st.integers(0, 40),
                                              st.floats(0, 100)), max_size=200))
@example(2, [("start", 0, 0.0), ("start", 1, 1.0), ("discard", 0, 0.0), ("due", 0, 0.0)])  # a discarded head
def test_meta_waits_stay_bounded_and_every_wait_ends(limit: int, ops: list) -> None:
    w = MetaWaits(limit)
    deadlines: dict[int, float] = {}
    ended: set[int] = set()
    for op, mid, t in ops:
        if op == "start":
            if mid not in w:
                deadlines[mid] = t
            cut = w.start(mid, t)
            ended.update(cut)
            for c in cut:
                deadlines.pop(c, None)
        elif op == "discard":
            w.discard(mid)
            deadlines.pop(mid, None)
        else:
            due = w.due(t)
            assert all(deadlines[m] <= t for m in due)
            for m in due:
                deadlines.pop(m)
        assert len(w) <= limit and len(w) == len(deadlines)
    assert sorted(w.due(float("inf"))) == sorted(deadlines)  # nothing waits forever
    assert len(w) == 0 and w.next_due() is None


def test_the_oldest_wait_is_cut_short_when_the_list_is_full() -> None:
    w = MetaWaits(2)
    assert w.start(1, 10.0) == [] and w.start(2, 5.0) == []
    assert w.start(3, 20.0) == [2]  # the one that would have ended first goes now
    assert w.next_due() == 10.0 and w.deadline(3) == 20.0


def test_decode_retries_back_off_and_never_give_up() -> None:
    r = DecodeRetries(1.0, 8.0)
    dues = []
    for i in range(6):
        dues.append(r.failed(7, "disk full", 100.0).due - 100.0)
        assert r.due(100.0 + dues[-1] - 0.01) == [] and r.due(100.0 + dues[-1]) == [7]
    assert dues == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    r.failed(7, "disk full", 0.0)
    assert [x.message_id for x in r.waiting()] == [7]
    r.succeeded(7)
    assert len(r) == 0 and r.failed(7, "again", 0.0).due == 1.0  # the backoff starts over
    with pytest.raises(ValueError):
        DecodeRetries(5.0, 1.0)


def test_the_fault_board_reports_onset_and_recovery_once(monkeypatch) -> None:
    stream = io.StringIO()
    board = FaultBoard(EventLog("receiver", stream=stream))
    for _ in range(50):
        board.report("frame_store", "database or disk is full")
    assert board.snapshot()["frame_store"]["failures"] == 50 and board.onsets == {"frame_store": 1}
    board.clear("frame_store")
    board.clear("frame_store")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["resource_fault", "resource_recovered"] and board.snapshot() == {}


def test_a_bundles_fingerprint_changes_with_any_byte_and_not_with_its_folder(tmp_path) -> None:
    from gateway.ground.bundle_check import CheckCache, fingerprint

    a = tmp_path / "a"
    (a / "vae").mkdir(parents=True)
    (a / "config.yaml").write_text("name: x\n")
    (a / "vae" / "w.safetensors").write_bytes(bytes(1000))
    first = fingerprint(str(a))
    b = tmp_path / "b"
    import shutil

    shutil.copytree(a, b)
    assert fingerprint(str(b)) == first  # a copy of a checked bundle is the same bundle
    (b / "vae" / "w.safetensors").write_bytes(bytes(999) + b"\x01")
    assert fingerprint(str(b)) != first
    assert fingerprint(str(tmp_path / "missing")) is None
    cache = CheckCache(tmp_path / "cache" / "checks.json")
    assert cache.get(first) is None
    cache.put(first, {"cadc": {"model_id": "61a9"}})
    assert CheckCache(tmp_path / "cache" / "checks.json").get(first) == {"cadc": {"model_id": "61a9"}}


def test_capping_meta_waits_brings_late_deadlines_forward_and_leaves_early_ones() -> None:
    # A restarted ground resumes its waits before the link says its time scale: capped once it does.
    w = MetaWaits(8)
    w.start(1, 300.0)
    w.start(2, 5.0)
    w.cap(10.0)
    assert w.deadline(1) == 10.0 and w.deadline(2) == 5.0
    assert w.due(6.0) == [2] and w.next_due() == 10.0
    assert w.due(10.0) == [1] and len(w) == 0
