"""The sender's parts when the host fails or input is hostile: the encoder thread and the inbox, in-process.

Each test would fail before the fix it covers (issue 16): an encoder thread
that died when its own error handler hit a full disk, an inbox that deleted
resubmissions silently, read whole files before checking their size and
followed symbolic links.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.config import load_sender_config
from gateway.daemon.faults import FaultBoard
from gateway.errors import RequestError, StoreUnavailable
from gateway.eval.launcher import wait_for
from gateway.sender.encoder import Encoder
from gateway.sender.inbox import Inbox
from gateway.store.spool import Spool
from gateway.transport.eventlog import EventLog
from packetizer.frame import FrameCodec
from test_daemons import make_images

pytestmark = pytest.mark.timeout(120)


class Lines(io.StringIO):
    """A log stream whose JSON lines the test can read."""

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, self.getvalue().splitlines()) if r["event"] == name]


def test_the_encoder_thread_survives_a_full_disk_in_its_own_error_handler(tmp_path: Path, monkeypatch) -> None:
    # Before: "database or disk is full" raised inside the encoder's error handler killed the thread, and every
    # job accepted after space returned stayed "accepted" forever.
    spool_path = tmp_path / "spool.db"
    cfg = load_sender_config(None, {"spool": str(spool_path), "link.endpoint": "ipc:///tmp/unused",
                                    "link.contact_plan": "unused.yaml", "spool_synchronous": "NORMAL"})
    spool = Spool(spool_path, "NORMAL")
    bad = spool.accept(b"this is text, not an image", "notes.txt", codec="webp", packets=2)
    good = spool.accept(make_images(1)[0][1], "ok.png", codec="webp", packets=2)
    disk_full = threading.Event()
    disk_full.set()
    real_failed, real_encoded = Spool.mark_failed, Spool.mark_encoded

    def refusing(real):
        def write(self: Spool, *a: Any, **kw: Any) -> Any:
            if disk_full.is_set():
                raise StoreUnavailable(f"spool {self.path}: cannot write: database or disk is full")
            return real(self, *a, **kw)
        return write

    monkeypatch.setattr(Spool, "mark_failed", refusing(real_failed))
    monkeypatch.setattr(Spool, "mark_encoded", refusing(real_encoded))
    log = Lines()
    faults = FaultBoard(EventLog("sender", stream=log))
    done: queue.Queue[int] = queue.Queue()
    enc = Encoder(cfg, FrameCodec(450), EventLog("sender", stream=log), done, faults)
    enc.start()
    try:
        wait_for(lambda: enc.failures >= 2, 60, "the encoder to meet the full disk twice")
        assert enc.is_alive() and faults.active("spool") and log.events("resource_fault")
        assert {r.state for r in spool.list()} == {"accepted"}  # nothing lost, nothing half-done
        disk_full.clear()  # space returns: no restart needed
        enc.wake.set()
        wait_for(lambda: spool.get(good).state == "encoded" and spool.get(bad).state == "failed", 60,
                 "both jobs to move on")
        assert done.get(timeout=1) == good
        assert spool.get(bad).reason == "the file is not an image in a format this sender reads (JPEG, PNG, WebP, " \
                                        "AVIF, TIFF, ...)"
    finally:
        enc.stop()
        enc.join(10)


class FakeSpool:
    """What the inbox asks of the sender: accept a job, and whether a file is still on its way."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[str, bytes]] = {}
        self.active: set[int] = set()

    def accept(self, data: bytes, name: str) -> int:
        if not data.startswith(b"\x89PNG"):
            raise RequestError("the file is not an image in a format this sender reads")
        mid = len(self.jobs) + 1
        self.jobs[mid] = (name, data)
        self.active.add(mid)
        return mid

    def in_flight(self, name: str, digest: str) -> int | None:
        import hashlib

        return next((m for m in self.active if self.jobs[m][0] == name
                     and hashlib.sha256(self.jobs[m][1]).hexdigest() == digest), None)


def make_inbox(tmp_path: Path, max_bytes: int = 1_000_000) -> tuple[Inbox, FakeSpool, Lines, Path]:
    folder = tmp_path / "inbox"
    folder.mkdir()
    fake, log = FakeSpool(), Lines()
    return Inbox(folder, fake.accept, fake.in_flight, EventLog("sender", stream=log), max_bytes), fake, log, folder


def scan_twice(inbox: Inbox) -> None:
    """Files are taken once they were stable for one poll."""
    inbox.scan()
    inbox.scan()


def test_a_resubmitted_file_is_sent_again_unless_it_is_still_on_its_way(tmp_path: Path) -> None:
    # Before: any earlier job with the same name and content, failed ones included, made the inbox delete
    # the file silently.
    inbox, fake, log, folder = make_inbox(tmp_path)
    png = make_images(1)[0][1]
    (folder / "a.png").write_bytes(png)
    scan_twice(inbox)
    assert list(fake.jobs) == [1] and not (folder / "a.png").exists()
    (folder / "a.png").write_bytes(png)  # dropped again while job 1 is still on its way
    scan_twice(inbox)
    assert list(fake.jobs) == [1] and not (folder / "a.png").exists()
    skipped = log.events("inbox_skipped")
    assert skipped and skipped[-1]["id"] == 1 and "still on its way" in skipped[-1]["reason"]
    fake.active.clear()  # job 1 finished (delivered or failed): a resubmission is a new job
    (folder / "a.png").write_bytes(png)
    scan_twice(inbox)
    assert list(fake.jobs) == [1, 2]


def test_links_fifos_folders_and_oversized_files_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    # Before: a 400 MB sparse file was read whole before the size check, and a link to frames.db was sent.
    inbox, fake, log, folder = make_inbox(tmp_path, max_bytes=1_000_000)
    secret = tmp_path / "frames.db"
    secret.write_bytes(make_images(1)[0][1])  # even a valid image behind a link is refused
    os.symlink(secret, folder / "link.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "album").mkdir()
    with open(folder / "huge.png", "wb") as f:
        f.truncate(400_000_000)  # sparse: no disk used
    tracemalloc.start()
    scan_twice(inbox)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000, f"the inbox allocated {peak} bytes"
    assert fake.jobs == {}
    rejected = {p.name for p in (folder / ".rejected").iterdir()}
    assert rejected == {"link.png", "pipe.png", "huge.png"}
    assert (folder / ".rejected" / "link.png").is_symlink() and secret.exists()
    reasons = {r["file"]: r["reason"] for r in log.events("inbox_rejected")}
    assert "symbolic link" in reasons["link.png"] and "not a plain file" in reasons["pipe.png"]
    assert "400000000 bytes, above limits.max_image_bytes = 1000000" in reasons["huge.png"]
    assert [r["file"] for r in log.events("inbox_skipped")] == ["album"]  # told once, left in place
    assert (folder / "album").is_dir()


def test_a_refused_file_and_a_full_spool_are_logged_and_handled_differently(tmp_path: Path) -> None:
    inbox, fake, log, folder = make_inbox(tmp_path)
    (folder / "notes.txt").write_bytes(b"not a picture")
    scan_twice(inbox)
    assert (folder / ".rejected" / "notes.txt").exists()
    assert log.events("inbox_rejected")[0]["reason"].startswith("the file is not an image")

    def full(data: bytes, name: str) -> int:
        raise StoreUnavailable("the sender cannot store the job now (database or disk is full)")

    inbox.accept = full
    (folder / "later.png").write_bytes(make_images(1)[0][1])
    scan_twice(inbox)
    assert (folder / "later.png").exists()  # kept for when there is room again
    assert log.events("inbox_waiting")
    inbox.accept = fake.accept
    time.sleep(0.01)
    inbox.scan()
    assert not (folder / "later.png").exists() and [n for n, _ in fake.jobs.values()] == ["later.png"]
