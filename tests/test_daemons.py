"""End-to-end tests: real link, ground-station and sender processes on loopback.

Every wait is bounded; links run time-scaled so a transfer takes seconds.
Helpers here are reused by the other ``test_daemons_*`` modules.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(count: int, size: int = 80) -> list[tuple[str, bytes]]:
    """Distinct small PNG crops of skimage sample photos."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee()]
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        y = (i * 13) % (src.shape[0] - size)
        x = (i * 29) % (src.shape[1] - size)
        crop = np.ascontiguousarray(src[y : y + size, x : x + size, :3])
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="PNG")
        out.append((f"img{i:03d}.png", buf.getvalue()))
    return out


def request(endpoint: str, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send(msgpack.packb(req, use_bin_type=True))
        if not s.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply from {endpoint}")
        return msgpack.unpackb(s.recv(), raw=False, strict_map_key=False)
    finally:
        s.close(linger=0)


def wait_for(pred, timeout: float, step: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Rig:
    """A link, a receiver and a sender as subprocesses in a temp dir."""

    def __init__(self, tmp: Path, preset: str | Path = "harsh", time_scale: float = 50.0, seed: int = 1,
                 sender_args: list[str] | None = None, receiver_args: list[str] | None = None,
                 link_args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.preset, self.time_scale, self.seed = str(preset), time_scale, seed
        p = [free_port() for _ in range(5)]
        self.ep = {
            "sender_side": f"tcp://127.0.0.1:{p[0]}",
            "ground_side": f"tcp://127.0.0.1:{p[1]}",
            "link_control": f"tcp://127.0.0.1:{p[2]}",
            "sender_control": f"tcp://127.0.0.1:{p[3]}",
            "receiver_control": f"tcp://127.0.0.1:{p[4]}",
        }
        self.outbox = tmp / "outbox"
        self.procs: dict[str, subprocess.Popen] = {}
        self.sender_args = sender_args or []
        self.receiver_args = receiver_args or []
        self.link_args = link_args or []
        self.trace = tmp / "trace.jsonl"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [PY, "-m", "gateway.cli", *argv], cwd=self.tmp, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )

    def start_link(self) -> None:
        self._spawn("link", ["link", "--config", self.preset, "--time-scale", str(self.time_scale),
                             "--seed", str(self.seed), "--sender-side", self.ep["sender_side"],
                             "--ground-side", self.ep["ground_side"], "--control", self.ep["link_control"],
                             "--trace", str(self.trace), *self.link_args])

    def start_receiver(self) -> None:
        self._spawn("receiver", ["receiver", "--config", str(ROOT / "configs/daemons/receiver.yaml"),
                                 "--store", str(self.tmp / "frames.db"), "--outbox", str(self.outbox),
                                 "--control", self.ep["receiver_control"], "--link-endpoint", self.ep["ground_side"],
                                 "--link-control", self.ep["link_control"], *self.receiver_args])

    def start_sender(self) -> None:
        self._spawn("sender", ["sender", "--config", str(ROOT / "configs/daemons/sender.yaml"),
                               "--spool", str(self.tmp / "spool.db"), "--inbox", str(self.tmp / "inbox"),
                               "--control", self.ep["sender_control"], "--link-endpoint", self.ep["sender_side"],
                               "--link-control", self.ep["link_control"], *self.sender_args])

    def start(self) -> "Rig":
        self.start_link()
        self.start_receiver()
        self.start_sender()
        wait_for(lambda: self._pingable("sender_control") and self._pingable("receiver_control")
                 and self._pingable("link_control"), 30, what="daemons to answer")
        return self

    def _pingable(self, ep: str) -> bool:
        try:
            return bool(request(self.ep[ep], {"cmd": "ping"}, timeout=0.5).get("ok"))
        except TimeoutError:
            return False

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def terminate(self, name: str) -> int:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout=15)

    def submit(self, name: str, data: bytes, **opts: Any) -> int:
        reply = request(self.ep["sender_control"], {"cmd": "send", "name": name, "image": data, **opts}, timeout=10)
        assert reply.get("ok"), reply
        return int(reply["id"])

    def outputs(self) -> dict[int, dict[str, Any]]:
        out = {}
        if self.outbox.is_dir():
            for j in self.outbox.glob("*.json"):
                out[int(j.stem)] = json.loads(j.read_text())
        return out

    def sender_status(self) -> dict[str, Any]:
        return request(self.ep["sender_control"], {"cmd": "status"})

    def link_stats(self) -> dict[str, Any]:
        return request(self.ep["link_control"], {"cmd": "stats"})

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for name in list(self.procs):
            p = self.procs.pop(name)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)


def check_outputs(rig: Rig, sent: dict[int, str]) -> None:
    """Every id exactly once in the outbox, each PNG equal to a local decode of the sender's bitstream."""
    import sqlite3

    from gateway.codec.registry import decode_any

    files = sorted(p.name for p in rig.outbox.iterdir() if not p.name.startswith("."))
    assert files == sorted([f"{i}.json" for i in sent] + [f"{i}.png" for i in sent])
    db = sqlite3.connect(str(rig.tmp / "spool.db"))
    outs = rig.outputs()
    for mid, name in sent.items():
        assert outs[mid]["source_name"] == name
        bs = db.execute("SELECT bitstream FROM messages WHERE id=?", (mid,)).fetchone()[0]
        local = decode_any(bytes(bs))
        got = np.asarray(Image.open(rig.outbox / f"{mid}.png").convert("RGB"))
        assert np.array_equal(local, got), f"message {mid}: ground output differs from local decode"
    db.close()


@pytest.fixture
def rig_factory(tmp_path):
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        r = Rig(tmp_path / f"rig{len(rigs)}", **kw)
        r.tmp.mkdir()
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.stop()


def test_thirty_images_through_harsh_link_exactly_once(rig_factory):
    rig = rig_factory(preset="harsh", time_scale=60.0).start()
    sent = {}
    for name, data in make_images(30):
        sent[rig.submit(name, data, packets=3, codec="webp")] = name
    wait_for(lambda: len(rig.outputs()) == 30, 150, what="30 outputs")
    # The ground station writes its outputs before the sender hears the final ACK.
    st = wait_for(lambda: (s := rig.sender_status())["counts"].get("delivered") == 30 and s, 60,
                  what="the sender to record 30 deliveries")
    check_outputs(rig, sent)
    # the harsh link lost frames, so selective repeat had to work
    assert st["counters"]["retransmissions"] > 0
    link = rig.link_stats()
    assert link["forward"]["dropped"].get("outage", 0) == 0
    rec = request(rig.ep["receiver_control"], {"cmd": "status"})
    assert rec["counts"]["done"] == 30
    # Every bit-flipped frame the link delivered to the ground was caught by the CRC, none slipped through.
    rig.terminate("link")  # flushes the link's buffered trace
    fates = [json.loads(line) for line in rig.trace.read_text().splitlines()]
    corrupted = sum(1 for f in fates if f["dir"] == "forward" and f["fate"] == "corrupted")
    assert rec["counters"].get("bad_CRCError", 0) == corrupted


def test_inbox_and_cli_send(rig_factory):
    rig = rig_factory(preset="clean", time_scale=1.0).start()
    imgs = make_images(2)
    inbox = rig.tmp / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / imgs[0][0]).write_bytes(imgs[0][1])
    src = rig.tmp / imgs[1][0]
    src.write_bytes(imgs[1][1])
    r = subprocess.run([PY, "-m", "gateway.cli", "send", str(src), "--packets", "3", "--sender", rig.ep["sender_control"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mid = int(r.stdout.strip())
    outs = wait_for(lambda: len(rig.outputs()) == 2 and rig.outputs(), 60, what="2 outputs")
    assert outs[mid]["source_name"] == imgs[1][0]
    assert {o["source_name"] for o in outs.values()} == {imgs[0][0], imgs[1][0]}
    assert not any(inbox.iterdir())  # accepted files leave the inbox
    st = subprocess.run([PY, "-m", "gateway.cli", "status", "--sender", rig.ep["sender_control"], "--receiver",
                         rig.ep["receiver_control"], "--link", rig.ep["link_control"]],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    assert "delivered" in st.stdout and "forward" in st.stdout
    assert rig.terminate("sender") == 0
    assert rig.terminate("receiver") == 0


def test_bad_jobs_fail_with_reason_and_daemon_survives(rig_factory):
    rig = rig_factory(preset="clean", time_scale=1.0).start()
    bad = request(rig.ep["sender_control"], {"cmd": "send", "name": "x.png", "image": b"not an image"})
    assert bad["ok"]
    tiny_budget = rig.submit("big.png", make_images(1, size=200)[0][1], packets=1, codec="webp", priority=5)
    refused = request(rig.ep["sender_control"], {"cmd": "send", "name": "y.png", "image": b"x", "codec": "nope"})
    assert not refused["ok"] and "codec" in refused["error"]
    garbage = request(rig.ep["sender_control"], {"cmd": 7})
    assert not garbage["ok"]

    def failed():
        st = rig.sender_status()
        return st["counts"]["failed"] >= 1 and st

    st = wait_for(failed, 30, what="the bad image to fail")
    reasons = {m["id"]: m["reason"] for m in st["messages"]}
    assert reasons[bad["id"]] and "Image" in reasons[bad["id"]] or "identify" in reasons[bad["id"]]
    ok_id = rig.submit("ok.png", make_images(1)[0][1], packets=3)
    wait_for(lambda: ok_id in rig.outputs(), 30, what="a good image after bad ones")
    st = rig.sender_status()
    states = {m["id"]: m["state"] for m in st["messages"]}
    assert states[tiny_budget] in ("failed", "delivered")
