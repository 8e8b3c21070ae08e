"""The ground-station daemon in this process, with the test standing in for the link on an ipc socket.

The daemon runs its real loop in a thread (decoding in a thread, the link's
schedule from an always-up contact plan); the test plays the link's ground
side: it sends frames to the daemon's peer and reads the ACK frames that come
back. Every wait is bounded and waits on what the daemon reports.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml
import zmq

import decode_runners
from gateway.codec.registry import make_codec
from gateway.daemon.config import load_receiver_config
from gateway.eval.launcher import request, wait_for
from gateway.ground.daemon import ReceiverDaemon
from gateway.ground.decode_worker import DecodeWorker
from gateway.protocol.meta import MessageMeta
from gateway.ratecontrol import Budget, fit
from gateway.transport.eventlog import EventLog
from gateway.transport.link_peer import FRAME
from packetizer.ack import AckStatus, unpack_acks
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import split_message

pytestmark = pytest.mark.timeout(120)
CODEC = FrameCodec(450)


class Lines:
    """A log stream the test can read."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, s: str) -> None:
        self.lines.extend(json.loads(line) for line in s.splitlines() if line)

    def flush(self) -> None:
        pass

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r["event"] == name]


class FakeLink:
    """The link's ground side: a ROUTER the daemon's DEALER connects to."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.peer: bytes | None = None
        self.acks: dict[int, Any] = {}  # message id -> last ACK entry

    def _read(self, timeout_ms: int) -> None:
        if not self.sock.poll(timeout_ms):
            return
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.peer = parts[0]
            if parts[1:2] == [FRAME]:
                for e in unpack_acks(CODEC.unpack(parts[2])):
                    self.acks[e.message_id] = e

    def send(self, frames: list[Frame | bytes]) -> None:
        deadline = time.monotonic() + 10
        while self.peer is None:  # the daemon says HELLO on connect
            assert time.monotonic() < deadline, "the daemon never said hello"
            self._read(50)
        for f in frames:
            self.sock.send_multipart([self.peer, FRAME, f if isinstance(f, bytes) else CODEC.pack(f)])

    def wait_ack(self, mid: int, status: AckStatus = AckStatus.DONE, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while not (mid in self.acks and self.acks[mid].status == status):
            assert time.monotonic() < deadline, f"no {status.name} ACK for {mid} (last: {self.acks.get(mid)})"
            self._read(50)
        return self.acks[mid]

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture
def ground(tmp_path: Path) -> Iterator[Any]:
    """Start a receiver (``ground(**overrides)``); yields (daemon, fake link, log) and stops it after the test."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"version": 1, "forward_rate_bps": 1e6, "availability": {"always": True}}))
    started: list[tuple[ReceiverDaemon, FakeLink, threading.Thread]] = []

    def start(worker: DecodeWorker | None = None, **overrides: Any) -> tuple[ReceiverDaemon, FakeLink, Lines]:
        link = FakeLink(f"ipc://{tmp_path}/ground-side")
        cfg = load_receiver_config(None, {
            "store": str(tmp_path / "frames.db"), "outbox": str(tmp_path / "outbox"),
            "control": f"ipc://{tmp_path}/control", "link.endpoint": f"ipc://{tmp_path}/ground-side",
            "link.contact_plan": str(plan), "decode.worker": "thread", "store_synchronous": "NORMAL",
            **overrides,
        })
        lines = Lines()
        made: list[Any] = []
        ready = threading.Event()

        def serve() -> None:
            # Built in the loop's own thread: its SQLite connection belongs to the thread that opened it.
            try:
                made.append(ReceiverDaemon(cfg, EventLog("receiver", "debug", stream=lines), worker=worker))
            except BaseException as e:  # handed to the test, which raises it
                made.append(e)
                return
            finally:
                ready.set()
            made[0].run()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert ready.wait(120), "the daemon did not finish starting (its bundle check included)"
        if not isinstance(made[0], ReceiverDaemon):
            link.close()
            raise made[0]
        started.append((made[0], link, thread))
        return made[0], link, lines

    yield start
    for daemon, link, thread in started:
        daemon.stop()
        thread.join(10)
        link.close()
        assert not thread.is_alive(), "the daemon did not stop"


def webp_message(mid: int, frames: int = 3, parity: int = 0) -> tuple[list[Frame], bytes, np.ndarray]:
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[100:180, 200:280])
    bits = fit(make_codec("webp"), img, Budget(frames, parity=parity)).bitstream
    return split_message(mid, bits, CODEC, parity), bits, img


def meta(mid: int, k: int, n: int, name: str = "astronaut.png", accepted_at: float | None = None) -> Frame:
    """The META frame; without ``accepted_at`` it is what a sender before the latency field sent."""
    payload = MessageMeta(name, 1234, "webp", accepted_at).pack(CODEC.payload_capacity)
    return Frame(FrameType.META, mid, 0, k, n, payload)


def outputs(tmp_path: Path) -> list[str]:
    out = tmp_path / "outbox"
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []


def message(tmp_path: Path, mid: int) -> dict[str, Any] | None:
    """The daemon's status line for ``mid`` (asked over its control socket, as an operator would)."""
    status = request(f"ipc://{tmp_path}/control", {"cmd": "status"}, timeout=5)
    return next((m for m in status["messages"] if m["id"] == mid), None)


def test_frames_are_stored_acked_assembled_decoded_and_described(ground, tmp_path: Path) -> None:
    daemon, link, lines = ground()
    frames, bits, img = webp_message(11, parity=1)
    k, n = frames[0].k, frames[0].n
    accepted = time.time() - 5.0
    link.send([meta(11, k, n, accepted_at=accepted), *frames[1:]])  # the first data frame is lost: parity fills it in
    assert link.wait_ack(11).complete
    wait_for(lambda: outputs(tmp_path) == ["11.json", "11.png"], 20, "the outputs")
    rec = json.loads((tmp_path / "outbox" / "11.json").read_text())
    assert (rec["message_id"], rec["source_name"], rec["source_bytes"], rec["codec"]) == (11, "astronaut.png", 1234,
                                                                                          "webp")
    assert (rec["frames_total"], rec["frames_data"], rec["frames_received"], rec["frames_lost"]) == (n, k, n - 1, 1)
    assert rec["bitstream_bytes"] == len(bits) and (rec["width"], rec["height"]) == (80, 80)
    assert rec["timings"]["decode_s"] >= 0 and rec["timings"]["first_frame_at"] <= rec["timings"]["assembled_at"]
    t = rec["timings"]
    assert t["accepted_at"] == accepted and t["latency_s"] >= 5
    assert t["latency_s"] == pytest.approx(t["decoded_at"] - accepted, abs=1e-3)
    status = request(f"ipc://{tmp_path}/control", {"cmd": "status"}, timeout=5)
    assert status["counts"]["done"] == 1 and status["counters"]["decoded"] == 1 and status["link"]["up"]
    assert lines.events("decoded")[0]["id"] == 11


def test_duplicates_after_completion_get_a_complete_ack_and_no_second_output(ground, tmp_path: Path) -> None:
    daemon, link, _ = ground()
    frames, _, _ = webp_message(12)
    link.send([meta(12, frames[0].k, frames[0].n), *frames])
    wait_for(lambda: outputs(tmp_path) == ["12.json", "12.png"], 20, "the outputs")
    first = (tmp_path / "outbox" / "12.json").stat().st_mtime_ns
    link.acks.clear()
    link.send(frames)  # a sender that missed the ACK repeats everything
    assert link.wait_ack(12).complete
    wait_for(lambda: daemon.counters["duplicate"] >= len(frames), 10, "the duplicates to be counted")
    assert outputs(tmp_path) == ["12.json", "12.png"]
    assert (tmp_path / "outbox" / "12.json").stat().st_mtime_ns == first
    # That META had no acceptance time (an older sender): the latency is unknown, not made up.
    assert json.loads((tmp_path / "outbox" / "12.json").read_text())["timings"]["latency_s"] is None


def test_garbage_is_counted_by_kind_and_the_daemon_goes_on(ground, tmp_path: Path) -> None:
    daemon, link, lines = ground()
    frames, _, _ = webp_message(13)
    good = CODEC.pack(frames[0])
    flipped = bytes([good[0]]) + bytes([good[1] ^ 0]) + good[2:20] + bytes([good[20] ^ 0xFF]) + good[21:]
    link.send([b"\x00" * 450, flipped, b"short"])
    link.send([meta(13, frames[0].k, frames[0].n), *frames])
    wait_for(lambda: outputs(tmp_path) == ["13.json", "13.png"], 20, "the outputs after garbage")
    c = daemon.counters
    assert (c["bad_frames"], c["bad_BadMagic"], c["bad_CRCError"], c["bad_FrameSizeError"]) == (3, 1, 1, 1)
    assert lines.events("bad_frame")


def test_without_its_meta_frame_a_message_is_assembled_after_the_grace_period(ground, tmp_path: Path) -> None:
    daemon, link, _ = ground(**{"ack.meta_grace_s": 0.3})
    frames, _, _ = webp_message(14)
    link.send(frames)
    wait_for(lambda: outputs(tmp_path) == ["14.json", "14.png"], 20, "the outputs without META")
    assert json.loads((tmp_path / "outbox" / "14.json").read_text())["source_name"] is None


def test_a_corrupt_bitstream_fails_with_its_reason_and_the_sender_is_told_why(ground, tmp_path: Path) -> None:
    daemon, link, lines = ground()
    frames = split_message(15, b"\x13" + bytes(900), CODEC)  # frames fine, bitstream header nonsense
    link.send([meta(15, frames[0].k, frames[0].n), *frames])
    nack = link.wait_ack(15, AckStatus.FAILED)  # resending cannot help: the sender is told why
    assert nack.reason.startswith("decode failed: BitstreamError") and not nack.complete
    failed = wait_for(lambda: (m := message(tmp_path, 15)) and m["state"] == "failed" and m, 20, "the message to fail")
    assert failed["reason"].startswith(nack.reason)
    assert outputs(tmp_path) == []


def test_a_crashing_decoder_is_retried_then_the_message_fails(ground, tmp_path: Path) -> None:
    worker = DecodeWorker("process", 60, run=decode_runners.crash)
    daemon, link, lines = ground(worker=worker, **{"decode.max_attempts": 2})
    frames, _, _ = webp_message(16)
    link.send([meta(16, frames[0].k, frames[0].n), *frames])
    failed = wait_for(lambda: (m := message(tmp_path, 16)) and m["state"] == "failed" and m, 60,
                      "the message to fail after its attempts")
    assert daemon.counters["decoder_crashed"] == 2
    assert failed["reason"] == "decoder crashed or timed out 2 times on this bitstream"
    assert [r["reason"] for r in lines.events("decoder_crashed")] == ["decoder process died (exit code 3)"] * 2
