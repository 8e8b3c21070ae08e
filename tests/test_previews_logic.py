"""Previews without sockets: the intact prefix, the planner's deadlines, the revision rules of the output writer,
and that a preview waits for the decode worker to be idle."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decode_runners import StandInProgressive, stand_in_progressive
from gateway.daemon.config import PreviewSettings
from gateway.ground.output import DecodeJob, OutputRecord, PreviewSkipped, PreviewSpec, on_disk
from gateway.ground.preview_decodes import PreviewDecodes
from gateway.ground.previews import MAX_PREVIEW_CRASHES, PreviewPlanner, intact_prefix, intact_prefix_length
from gateway.store.framestore import FrameStore
from gateway.store.revisions import Revision
from gateway.transport.eventlog import EventLog
from packetizer.frame import FrameCodec
from packetizer.segment import split_message

CODEC = FrameCodec(450)
CAP = CODEC.payload_capacity


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 3), st.data())
def test_the_intact_prefix_is_the_gapless_start_or_with_k_frames_the_whole_message(size, parity, data) -> None:
    message = bytes((i * 7 + size) % 256 for i in range(size))
    frames = split_message(5, message, CODEC, parity)
    k = frames[0].k
    have = data.draw(st.sets(st.sampled_from(range(len(frames)))), label="indices received")
    got = [f for f in frames if f.index in have]
    j, prefix = intact_prefix(got, k)
    assert j == intact_prefix_length(have, k)
    if len(have) >= k:  # the erasure code rebuilds every data frame: the whole message
        assert (j, prefix) == (k, message)
    else:
        assert all(i in have for i in range(j)) and j not in have
        assert prefix == message[: j * CAP]


def test_the_planner_makes_a_quiet_message_due_once_until_another_frame_comes() -> None:
    p = PreviewPlanner()
    p.touch(1, 10.0)
    p.touch(2, 5.0)
    assert p.due(4.9) == 0 and p.next_due() == 5.0
    p.touch(2, 12.0)  # a frame came: its quiet time starts again
    assert p.due(11.0) == 1 and p.pop_ready() == 1 and p.pop_ready() is None
    p.idle(1)  # tried; nothing more until a frame comes
    assert p.due(100.0) == 1 and p.pop_ready() == 2
    p.idle(2)
    assert p.due(1000.0) == 0 and p.next_due() is None
    p.tried(2, 3)
    assert p.tried_frames(2) == 3 and p.tried_frames(1) == 0
    p.touch(2, 1001.0)
    assert p.force_all(500.0) == 1  # the pass ended: only 2 has had a frame since it was tried
    assert p.due(500.0) == 1 and p.pop_ready() == 2


def test_the_planner_forgets_gives_up_and_stops_after_crashes() -> None:
    p = PreviewPlanner()
    for mid in (1, 2, 3):
        p.touch(mid, 1.0)
    p.forget(1)
    p.never(2)
    assert p.due(2.0) == 1 and p.pop_ready() == 3 and 1 not in p
    p.touch(2, 3.0)  # a message without previews stays without
    for _ in range(MAX_PREVIEW_CRASHES - 1):
        assert not p.crashed(3)
    assert p.crashed(3)
    p.touch(3, 4.0)
    p.force(3, 4.0)
    assert p.due(10.0) == 0 and p.pop_ready() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["touch", "force", "force_all", "due", "pop", "forget", "never"]),
                          st.integers(0, 4), st.integers(0, 20)), max_size=60))
def test_the_planner_matches_a_plain_model(ops) -> None:
    """Against a model: a message is queued once its deadline passed, handed out once in deadline order, and
    not again until a frame (touch) or a retry (force) arms it; forgotten and given-up ones never come out."""
    p = PreviewPlanner()
    armed: dict[int, int] = {}  # message -> deadline
    ready: list[int] = []
    tracked: set[int] = set()
    never: set[int] = set()
    now = 0
    for op, mid, t in ops:
        now += t % 3
        if op == "touch":
            p.touch(mid, now + t)
            tracked.add(mid)
            if mid not in never and mid not in ready:
                armed[mid] = now + t
        elif op == "force":
            p.force(mid, now)
            if mid in tracked and mid not in never and mid not in ready:
                armed[mid] = now
        elif op == "force_all":
            p.force_all(now)
            armed = {m: now for m in armed}
        elif op == "due":
            p.due(now)
            for m in sorted((m for m, d in armed.items() if d <= now), key=lambda m: (armed[m], m)):
                ready.append(m)
                del armed[m]
        elif op == "forget":
            p.forget(mid)
            tracked.discard(mid)
            never.discard(mid)
            armed.pop(mid, None)
            ready = [m for m in ready if m != mid]
        elif op == "never":
            p.never(mid)
            tracked.add(mid)
            never.add(mid)
            armed.pop(mid, None)
            ready = [m for m in ready if m != mid]
        else:
            assert p.pop_ready() == (ready.pop(0) if ready else None)
        assert p.queued() == len(ready)
        assert p.next_due() == (min(armed.values()) if armed else None)


# --- the output writer's revision rules ----------------------------------------------------------------------

def _job(outbox: Path, stream: bytes, frames: int | None, revision: int, k: int = 4, min_layers: int = 0) -> DecodeJob:
    from gateway.store.framestore import StoredMessage

    msg = StoredMessage(9, "receiving", k, k, 1.0, 2.0, None, None, frames or k, 0, 0, None, None, None, 0)
    data = stream if frames is None else stream[: frames * CAP]
    spec = None if frames is None else PreviewSpec(frames, min_layers)
    return DecodeJob(msg, data, str(outbox), 450, revision=revision, preview=spec)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["preview", "complete"]), st.integers(1, 4), st.booleans()),
                min_size=1, max_size=8))
def test_revisions_go_up_and_are_written_once_even_when_the_store_missed_some(jobs) -> None:
    """The daemon's bookkeeping with crashes: after a "crash" the store does not learn what was written, so the
    next job carries a stale revision; the outbox still never gets a revision twice or goes backwards."""
    stream = StandInProgressive.bitstream(4 * CAP - 12)
    with tempfile.TemporaryDirectory() as d:
        outbox = Path(d) / "outbox"
        outbox.mkdir()
        stored = 0  # the revision the frame store recorded
        complete_written = False
        for kind, frames, crash in jobs:
            job = _job(outbox, stream, None if kind == "complete" else frames, stored + 1, min_layers=0)
            result = stand_in_progressive(job)
            if isinstance(result, OutputRecord) and not crash:
                stored = max(stored, result.revision)
            elif isinstance(result, PreviewSkipped) and result.reason == "superseded":
                stored = max(stored, result.on_disk.revision)
            if isinstance(result, OutputRecord) and result.complete:
                complete_written = True
            disk = on_disk(outbox, 9)
            assert disk.complete == complete_written
        lines = [tuple(map(int, line.split())) for line in (Path(d) / "writes.log").read_text().splitlines()] \
            if (Path(d) / "writes.log").exists() else []
        revs = [r for _, r, _, _ in lines]
        assert revs == sorted(set(revs)), f"a revision written twice or out of order: {lines}"
        completes = [i for i, (_, _, c, _) in enumerate(lines) if c]
        assert len(completes) <= 1 and (not completes or completes[0] == len(lines) - 1)


def test_a_preview_needs_new_layers_and_a_complete_job_does_not_write_twice(tmp_path: Path) -> None:
    stream = StandInProgressive.bitstream(4 * CAP - 12)
    (tmp_path / "outbox").mkdir()
    out = tmp_path / "outbox"
    first = stand_in_progressive(_job(out, stream, 1, 1))
    assert isinstance(first, OutputRecord) and (first.revision, first.complete, first.frames_used) == (1, False, 1)
    assert (first.layers_decoded, first.layers_total) == (1, 5)
    again = stand_in_progressive(_job(out, stream, 2, 2, min_layers=2))  # two frames hold only two layers
    assert isinstance(again, PreviewSkipped) and again.reason == "no_new_layers"
    stale = stand_in_progressive(_job(out, stream, 2, 1))  # a revision the outbox already has
    assert isinstance(stale, PreviewSkipped) and stale.reason == "superseded" and stale.on_disk.revision == 1
    done = stand_in_progressive(_job(out, stream, None, 1))  # stale revision: written one above the outbox's
    assert isinstance(done, OutputRecord) and (done.revision, done.complete) == (2, True)
    twice = stand_in_progressive(_job(out, stream, None, 2))  # the daemon died before recording it
    assert twice == done
    late = stand_in_progressive(_job(out, stream, 3, 3))
    assert isinstance(late, PreviewSkipped) and late.on_disk.complete
    rec = json.loads((out / "9.json").read_text())
    assert (rec["revision"], rec["complete"], rec["frames_used"], rec["frames_data"]) == (2, True, 4, 4)
    assert (tmp_path / "writes.log").read_text().splitlines() == ["9 1 0 1", "9 2 1 4"]


def test_a_record_from_before_revisions_reads_as_revision_1_complete(tmp_path: Path) -> None:
    (tmp_path / "5.json").write_text(json.dumps({"message_id": 5, "frames_data": 3}))
    disk = on_disk(tmp_path, 5)
    assert (disk.revision, disk.complete, disk.frames_used) == (1, True, 3)
    (tmp_path / "6.json").write_text("{not json")
    assert on_disk(tmp_path, 6).revision == 0


# --- previews wait for the worker ----------------------------------------------------------------------------

class _Lines:
    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


def test_a_preview_is_submitted_only_when_the_worker_is_idle_and_one_at_a_time(tmp_path: Path) -> None:
    store = FrameStore(tmp_path / "f.db", synchronous="NORMAL")
    stream = StandInProgressive.bitstream(4 * CAP - 12)
    counters: Counter = Counter()
    jobs: list[DecodeJob] = []
    previews = PreviewDecodes(PreviewSettings(quiet_s=1.0), store, EventLog("t", "debug", stream=_Lines()),
                              counters, lambda msg, data, rev, spec: DecodeJob(msg, data, str(tmp_path), 450,
                                                                                 revision=rev, preview=spec), 1, 10)
    for mid in (1, 2):
        frames = split_message(mid, stream, CODEC)
        store.store_batch(frames[:mid])  # message 1: frame 0; message 2: frames 0 and 1
    previews.on_frames({1, 2}, 0.0, 1.0)
    previews.turn(0.5, True, jobs.append)
    assert jobs == []  # not quiet yet
    previews.turn(2.0, False, jobs.append)
    assert jobs == [] and previews.planner.queued() == 2  # due, but a complete decode is waiting
    previews.turn(2.1, True, jobs.append)
    previews.turn(2.2, True, jobs.append)  # the first preview is still running
    assert [(j.message_id, j.preview.frames_used, j.revision) for j in jobs] == [(1, 1, 1)]
    from gateway.ground.decode_worker import DecodeOutcome

    rec = stand_in_progressive(jobs[0])
    assert previews.on_outcome(DecodeOutcome(1, "ok", record=rec, preview=True), 2.3) is None
    assert store.latest_revision(1) == Revision(1, 1, False, 1, 4, 1, 5, rec.timings.decoded_at)
    assert store.state(1) == "receiving" and store.ack_state(1).status.name == "RECEIVING"
    previews.turn(2.4, True, jobs.append)
    assert [(j.message_id, j.preview.frames_used) for j in jobs[1:]] == [(2, 2)]
    assert previews.on_outcome(DecodeOutcome(2, "retry", reason="HostError: disk full", preview=True), 2.5)
    previews.turn(2.6, True, jobs.append)
    assert len(jobs) == 2  # the retry waits its backoff
    previews.turn(4.0, True, jobs.append)
    assert [(j.message_id, j.preview.frames_used) for j in jobs[2:]] == [(2, 2)]
    assert counters["previews_written"] == 1 and counters["preview_retries"] == 1
    store.close()


def test_the_receiver_config_keys() -> None:
    from gateway.daemon.config import load_receiver_config
    from gateway.errors import ConfigError
    from gateway.paths import config_dir

    shipped = config_dir() / "daemons" / "receiver.yaml"
    cfg = load_receiver_config(shipped)
    assert cfg.previews == PreviewSettings(enabled=True, quiet_s=10.0, min_frames=1, lifetime_margin_s=300.0)
    cfg = load_receiver_config(shipped, {"previews.enabled": False, "previews.quiet_s": 2.5})
    assert not cfg.previews.enabled and cfg.previews.quiet_s == 2.5
    with pytest.raises(ConfigError, match="previews.min_frames"):
        load_receiver_config(shipped, {"previews.min_frames": 0})
    with pytest.raises(ConfigError, match="previews.sometimes"):
        load_receiver_config(shipped, {"previews.sometimes": True})


def test_the_meta_frame_carries_when_the_sender_gives_the_message_up() -> None:
    import msgpack

    from gateway.protocol.meta import MessageMeta

    m = MessageMeta("a.png", 12, "cadc", 1000.0, 87400.0)
    assert MessageMeta.unpack(m.pack(CAP)) == m
    older = msgpack.packb({"name": "a.png", "size": 12, "codec": "cadc", "accepted_at": 1000.0})
    assert MessageMeta.unpack(older).expires_at is None  # a sender before it: no lifetime trigger
    assert MessageMeta.unpack(msgpack.packb({"expires_at": "soon"})).expires_at is None
    assert "expires_at" not in msgpack.unpackb(MessageMeta("a.png", 12, "cadc", 1000.0).pack(CAP))


def test_capping_the_planner_brings_late_previews_forward() -> None:
    p = PreviewPlanner()
    p.touch(1, 400.0)
    p.touch(2, 3.0)
    p.cap(12.0)
    assert p.next_due() == 3.0
    p.due(3.0)
    assert p.pop_ready() == 2 and p.next_due() == 12.0
    p.due(12.0)
    assert p.pop_ready() == 1
