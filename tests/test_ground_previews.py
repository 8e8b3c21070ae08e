"""Previews on the ground station: a stalled message is written from its intact prefix, each revision replaces
the last atomically, the complete picture is the last revision, the sender hears RECEIVING until then, and a
kill -9 between two revisions loses nothing and writes nothing twice.

The decoder is the stand-in progressive codec of ``decode_runners`` (the real daemon, store, worker and output
writer; no model), so these run in seconds; the real CADC prefix decode is covered in test_cadc_progressive.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import decode_runners
from decode_runners import StandInProgressive
from gateway.eval.launcher import request, wait_for
from gateway.ground.decode_worker import DecodeWorker
from gateway.protocol.meta import MessageMeta
from gateway.store.framestore import FrameStore
from packetizer.ack import AckStatus
from packetizer.frame import Frame, FrameType
from packetizer.segment import split_message
from test_receiver import CODEC, FakeLink, ground, meta, outputs, webp_message  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).resolve().parent
#: A stand-in bitstream of exactly four data frames, each adding one of its five layers (the last two the fourth).
STREAM = StandInProgressive.bitstream(4 * CODEC.payload_capacity - 12)


def _record(tmp_path: Path, mid: int) -> dict[str, Any] | None:
    try:
        return json.loads((tmp_path / "outbox" / f"{mid}.json").read_text())
    except (OSError, ValueError):
        return None


def _revision(tmp_path: Path, mid: int, revision: int, timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: (r := _record(tmp_path, mid)) and r["revision"] >= revision and r, timeout,
                    f"revision {revision} of message {mid}")


def _writes(root: Path) -> list[tuple[int, ...]]:
    log = root / "writes.log"
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()] if log.exists() else []


def _status(tmp_path: Path) -> dict[str, Any]:
    return request(f"ipc://{tmp_path}/control", {"cmd": "status"}, timeout=5)


def _stand_in(**overrides: Any) -> dict[str, Any]:
    return {"decode.check_bundle": False, "previews.quiet_s": 0.3, **overrides}


def _satgw_status_shows(tmp_path: Path, capsys: Any, words: str) -> None:
    from gateway.cli.daemons import status_main

    status_main(["--receiver", f"ipc://{tmp_path}/control", "--sender", f"ipc://{tmp_path}/no-sender",
                 "--link", f"ipc://{tmp_path}/no-link", "--timeout", "0.2"])
    out = " ".join(capsys.readouterr().out.split())
    assert words in out and "previews: 1 written" in out, out


def test_a_stalled_message_is_previewed_revised_and_finally_delivered(ground, tmp_path: Path, capsys) -> None:
    worker = DecodeWorker("thread", 60, run=decode_runners.stand_in_progressive)
    daemon, link, lines = ground(worker=worker, **_stand_in())
    frames = split_message(21, STREAM, CODEC)
    k = frames[0].k
    assert k == 4
    link.send([meta(21, k, k), frames[0]])
    first = _revision(tmp_path, 21, 1)
    assert (first["complete"], first["revision"], first["frames_used"], first["frames_data"]) == (False, 1, 1, 4)
    assert (first["layers_decoded"], first["layers_total"], first["source_name"]) == (1, 5, "astronaut.png")
    # A preview is not a delivery: the sender still hears RECEIVING, the message is still being received.
    ack = link.wait_ack(21, AckStatus.RECEIVING)
    assert ack.status == AckStatus.RECEIVING and ack.received == frozenset({0})
    # The worker writes the files, then the daemon records the revision: status says so once it has.
    st = wait_for(lambda: (s := _status(tmp_path))["previews"]["written"] == 1 and s, 10, "the preview recorded")
    assert st["counts"]["receiving"] == 1 and st["counts"]["done"] == 0
    line = next(m for m in st["messages"] if m["id"] == 21)
    assert line["revision"]["revision"] == 1 and line["revision"]["frames_used"] == 1
    _satgw_status_shows(tmp_path, capsys, "preview message 21: revision 1 from 1 of 4")
    link.send([frames[2]])  # a gap: the intact prefix is still frame 0 alone, nothing new to show
    wait_for(lambda: daemon.counters["stored"] >= 2, 10, "frame 2 stored")
    time.sleep(0.8)
    assert _record(tmp_path, 21)["revision"] == 1
    link.send([frames[1]])  # the gap closes: frames 0..2 make a longer prefix
    second = _revision(tmp_path, 21, 2)
    assert (second["complete"], second["frames_used"], second["layers_decoded"]) == (False, 3, 3)
    link.send([frames[3]])
    done = _revision(tmp_path, 21, 3)
    assert (done["complete"], done["frames_used"], done["layers_decoded"]) == (True, 4, 5)
    assert link.wait_ack(21, AckStatus.DONE).complete
    assert _writes(tmp_path) == [(21, 1, 0, 1), (21, 2, 0, 3), (21, 3, 1, 4)]
    assert outputs(tmp_path) == ["21.json", "21.png"]  # replaced in place, no second copy
    store_revisions = [(r.revision, r.complete, r.frames_used) for r in _history(daemon, 21)]
    assert store_revisions == [(1, False, 1), (2, False, 3), (3, True, 4)]
    assert [e["revision"] for e in lines.events("preview_written")] == [1, 2]
    assert daemon.counters["decoded"] == 1 and daemon.counters["previews_written"] == 2
    from prometheus_client import generate_latest

    scraped = generate_latest(daemon.metrics.registry).decode()
    assert "satgw_ground_previews_written_total 2.0" in scraped
    assert "satgw_ground_images_delivered_total 1.0" in scraped  # previews are not deliveries


def _history(daemon: Any, mid: int) -> list[Any]:
    """The frame store's revisions of ``mid``, read through a connection of this thread."""
    store = FrameStore(daemon.cfg.store, synchronous="NORMAL")
    try:
        return store.revision_history(mid)
    finally:
        store.close()


def test_classical_codecs_wait_for_the_whole_message(ground, tmp_path: Path) -> None:
    daemon, link, _ = ground(**_stand_in())
    frames, _, _ = webp_message(22, frames=3)
    link.send([meta(22, frames[0].k, frames[0].n), *frames[:2]])
    # The decoder says webp cannot decode a prefix: nothing is written, and the next webp message is not tried.
    wait_for(lambda: daemon.counters["previews_skipped"] >= 1, 20, "the preview attempt")
    assert outputs(tmp_path) == []
    other, _, _ = webp_message(23, frames=3)
    link.send([other[0]])
    time.sleep(1.0)
    assert daemon.counters["previews_skipped"] == 1 and outputs(tmp_path) == []
    link.send(frames[2:])
    rec = _revision(tmp_path, 22, 1)
    assert rec["complete"] and rec["revision"] == 1 and rec["layers_decoded"] is None


def test_the_end_of_a_pass_and_a_lifetime_nearly_over_preview_at_once(ground, tmp_path: Path) -> None:
    plan = tmp_path / "pass.yaml"  # one 3-second pass, starting with the daemon
    plan.write_text(yaml.safe_dump({"version": 1, "forward_rate_bps": 1e6,
                                    "availability": {"windows": [[0, 3], [1000, 2000]]}}))
    worker = DecodeWorker("thread", 60, run=decode_runners.stand_in_progressive)
    daemon, link, lines = ground(worker=worker, **_stand_in(**{"previews.quiet_s": 3600,
                                                               "previews.lifetime_margin_s": 5,
                                                               "link.contact_plan": str(plan)}))
    a = split_message(31, STREAM, CODEC)
    b = split_message(32, STREAM, CODEC)
    expiring = MessageMeta("b.png", 10, "cadc", time.time(), time.time() + 6).pack(CODEC.payload_capacity)
    link.send([a[0], Frame(FrameType.META, 32, 0, 4, 4, expiring), b[0], b[1]])
    wait_for(lambda: daemon.counters["stored"] >= 3, 10, "frames stored")
    # b's sender gives it up in 6 s; with a 5 s margin it is previewed within about a second, quiet or not.
    assert _revision(tmp_path, 32, 1, timeout=5)["frames_used"] == 2
    assert _record(tmp_path, 31) is None
    # a has only the link's pass: it ends 3 s after the start and a is previewed then, an hour before its quiet time.
    rec = _revision(tmp_path, 31, 1, timeout=10)
    assert rec["frames_used"] == 1 and not rec["complete"]
    assert any(e.get("reason") == "the link's pass ended" for e in lines.events("previews_due"))


def _ground_config(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"version": 1, "forward_rate_bps": 1e6, "availability": {"always": True}}))
    cfg = {"store": str(tmp_path / "frames.db"), "outbox": str(tmp_path / "outbox"), "store_synchronous": "FULL",
           "control": f"ipc://{tmp_path}/control",
           "link": {"endpoint": f"ipc://{tmp_path}/ground-side", "control": None, "contact_plan": str(plan)},
           "decode": {"worker": "thread", "check_bundle": False}, "previews": {"quiet_s": 0.3}}
    path = tmp_path / "receiver.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class _Ground:
    """The ground station with the stand-in decoder as a process of its own, to be killed with SIGKILL."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp, self.config = tmp_path, _ground_config(tmp_path)
        self.proc: subprocess.Popen | None = None

    def start(self, link: FakeLink) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
        with open(self.tmp / "receiver.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "stand_in_ground.py"), str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        link.peer = None  # the new process says hello from a new socket
        wait_for(lambda: self._ping(), 60, "the ground station to answer")

    def _ping(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (self.tmp / "receiver.log").read_text()[-2000:]
        try:
            return bool(request(f"ipc://{self.tmp}/control", {"cmd": "ping"}, timeout=0.5, retries=1).get("ok"))
        except Exception:
            return False

    def kill(self, link: FakeLink) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # what the dead process sent last, read now: its identity must not stick
            link._read(50)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _Watch:
    """Every (revision, inode) the outbox's record of one message had, polled: a revision written twice would
    show with two inodes (each write is a rename)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen, self.stop = path, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            try:
                with open(self.path, "rb") as f:  # inode and content of one file, even if a rename comes between
                    ino, rec = os.fstat(f.fileno()).st_ino, json.loads(f.read())
            except (OSError, ValueError):
                continue
            if not self.seen or self.seen[-1] != (rec["revision"], ino):
                self.seen.append((rec["revision"], ino))

    def close(self) -> list[tuple[int, int]]:
        self.stop.set()
        self.thread.join(5)
        return self.seen


def test_kill_9_between_two_revisions_loses_nothing_and_writes_nothing_twice(tmp_path: Path) -> None:
    link = FakeLink(f"ipc://{tmp_path}/ground-side")
    ground_station = _Ground(tmp_path)
    frames = split_message(41, STREAM, CODEC)
    watch = _Watch(tmp_path / "outbox" / "41.json")
    try:
        ground_station.start(link)
        link.send([meta(41, 4, 4), frames[0]])
        _revision(tmp_path, 41, 1)
        # Killed in the worst place: revision 2 is in the outbox but the frame store has not recorded it yet.
        (tmp_path / "hang-after-write").touch()
        link.send([frames[1]])
        _revision(tmp_path, 41, 2)
        wait_for(lambda: not (tmp_path / "hang-after-write").exists(), 10, "the write to hang")
        ground_station.kill(link)
        ground_station.start(link)
        # After its quiet time the restarted ground finds revision 2 in the outbox: recorded, not written again.
        wait_for(lambda: _status(tmp_path)["counters"].get("previews_skipped", 0) >= 1, 20,
                 "the restarted ground to find revision 2")
        # Killed again between two revisions, this time with everything recorded.
        ground_station.kill(link)
        ground_station.start(link)
        link.send([frames[2]])
        _revision(tmp_path, 41, 3)
        link.send([frames[3]])
        done = _revision(tmp_path, 41, 4)
        assert done["complete"] and done["frames_used"] == 4
        assert link.wait_ack(41, AckStatus.DONE).complete
        time.sleep(0.5)  # anything written twice would have shown by now
    finally:
        seen = watch.close()
        ground_station.stop()
        link.close()
    assert _writes(tmp_path) == [(41, 1, 0, 1), (41, 2, 0, 2), (41, 3, 0, 3), (41, 4, 1, 4)]
    revisions = [r for r, _ in seen]
    assert revisions == sorted(set(revisions)), seen  # each revision once (one inode), never backwards
    store = FrameStore(tmp_path / "frames.db")
    try:
        assert [(r.revision, r.complete, r.frames_used) for r in store.revision_history(41)] == \
            [(1, False, 1), (2, False, 2), (3, False, 3), (4, True, 4)]
        assert store.state(41) == "done"
    finally:
        store.close()
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir() if not p.name.startswith(".")) == \
        ["41.json", "41.png"]
