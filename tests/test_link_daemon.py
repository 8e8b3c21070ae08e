"""The link daemon on loopback: a real subprocess, real sockets, bounded time."""

from __future__ import annotations

import json
import math
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest
import yaml
import zmq

from link_sim.trace import read_trace
from gateway.transport.curve import CurveKeys, generate_keypair, load_key
from gateway.transport.link_peer import LinkPeer

pytestmark = pytest.mark.timeout(60)

FRAME_SIZE = 450
ANY_PORT = {"sender_side": "tcp://127.0.0.1:*", "ground_side": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"}


class Daemon:
    """A link daemon subprocess, its resolved endpoints and its stderr log lines."""

    def __init__(self, tmp_path: Path, config: dict, *extra: str) -> None:
        path = tmp_path / "link.yaml"
        path.write_text(yaml.safe_dump({"endpoints": ANY_PORT, "stats_interval_s": 0.2, **config}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "link_sim.daemon", "--config", str(path), *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.start = self.wait_event("start", 20)
        self.ctx = zmq.Context()
        self.peers: list[LinkPeer] = []

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass

    def wait_event(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if msg.get("event") == event:
                return msg
        raise AssertionError(f"no {event!r} log line; stderr: {''.join(self.raw)[-2000:]}")

    def request(self, payload: Any, *, raw: bool = False, curve: CurveKeys | None = None) -> dict:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        if curve is not None:
            sock.curve_publickey, sock.curve_secretkey = curve.public, curve.secret
            sock.curve_serverkey = curve.server_public
        sock.connect(self.start["control"])
        sock.send(payload if raw else msgpack.packb(payload))
        try:
            return msgpack.unpackb(sock.recv())
        finally:
            sock.close()

    def connect(self, side: str, curve: CurveKeys | None = None) -> LinkPeer:
        peer = LinkPeer(self.ctx, self.start[side], curve=curve)
        self.peers.append(peer)
        return peer

    def wait_peers(self, *peers: LinkPeer, curve: CurveKeys | None = None) -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for p in peers:
                p.send_hello()
            if all(self.request({"cmd": "stats"}, curve=curve)["peers"].values()):
                return
            time.sleep(0.02)
        raise AssertionError("peers never registered with the link")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(10)

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.ctx.destroy(linger=0)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(config: dict, *extra: str) -> Daemon:
        d = Daemon(tmp_path, config, *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes(FRAME_SIZE - 4)


def receive_all(peer: LinkPeer, quiet_ms: int = 300, limit: int = 100_000) -> list[bytes]:
    out = []
    while len(out) < limit:
        f = peer.recv_frame(quiet_ms)
        if f is None:
            break
        out.append(f)
    return out


CLEAN = {"forward": {"rate_bps": 1e9}, "return": {"rate_bps": 1e9}}


def test_forwards_frames_and_acks_both_ways(daemons: Any, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    d = daemons(CLEAN, "--trace", str(trace))
    sender, ground = d.connect("sender_side"), d.connect("ground_side")
    d.wait_peers(sender, ground)
    sent = [numbered(i) for i in range(300)]
    for f in sent:
        assert sender.send_frame(f)
    got = receive_all(ground)
    assert got == sent  # intact and in order on a clean link
    for f in got:
        ground.send_frame(f[:4] + b"ACK" + bytes(FRAME_SIZE - 7))
    acks = receive_all(sender)
    assert [a[:4] for a in acks] == [f[:4] for f in sent] and all(a[4:7] == b"ACK" for a in acks)
    stats = d.request({"cmd": "stats"})
    assert stats["ok"] and stats["forward"]["delivered"] == 300 and stats["return"]["delivered"] == 300
    assert stats["forward"]["bytes_in"] == 300 * FRAME_SIZE
    assert d.stop() == 0
    stop = d.wait_event("stop", 5)
    assert stop["forward"]["in"] == 300
    records = list(read_trace(trace))
    assert len(records) == 600 and {r["fate"] for r in records} == {"delivered"}
    assert sorted(r["seq"] for r in records if r["dir"] == "forward") == list(range(300))


def test_loss_preset_drops_about_the_configured_share_and_delays_frames(daemons: Any) -> None:
    n, p = 2000, 0.3
    config = {
        "forward": {"rate_bps": 1e9, "loss": {"p": p}, "delay": {"propagation_s": 20.0}},
        "return": {"rate_bps": 1e9},
        "time_scale": 100.0,  # 20 simulated seconds of delay take 0.2 s of wall time
        "seed": 5,
    }
    d = daemons(config)
    sender, ground = d.connect("sender_side"), d.connect("ground_side")
    d.wait_peers(sender, ground)
    t0 = time.monotonic()
    for i in range(n):
        assert sender.send_frame(numbered(i))
    first = ground.recv_frame(5000)
    assert first is not None and time.monotonic() - t0 >= 0.19
    got = [first, *receive_all(ground, quiet_ms=500)]
    assert abs(len(got) - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))
    stats = d.request({"cmd": "stats"})["forward"]
    assert stats["delivered"] == len(got) and stats["dropped"]["loss"] == n - len(got)


def test_control_answers_stats_schedule_ping_and_refuses_garbage(daemons: Any) -> None:
    config = {
        "forward": {"rate_bps": 9600},
        "return": {"rate_bps": 2400},
        "availability": {"periodic": {"period_s": 5700, "duration_s": 600}},
        "time_scale": 60.0,
    }
    d = daemons(config)
    sched = d.request({"cmd": "schedule"})
    assert sched["ok"] and sched["up"] is True
    assert sched["forward_rate_bps"] == 9600 and sched["return_rate_bps"] == 2400
    assert sched["frame_size"] == FRAME_SIZE and sched["time_scale"] == 60
    assert 0 <= sched["now"] < 600 and sched["next_change_in"] == pytest.approx(600 - sched["now"], abs=1e-6)
    assert d.request({"cmd": "ping"}) == {"ok": True, "pong": True}
    for bad in (b"\xc1\xff garbage", msgpack.packb([1, 2]), msgpack.packb({"cmd": "reboot"}), msgpack.packb("x")):
        reply = d.request(bad, raw=True)
        assert reply["ok"] is False and "stats" in reply["error"]
    stats = d.request({"cmd": "stats"})
    assert stats["garbage"]["control"] == 4
    assert set(stats) >= {"now", "up", "forward", "return", "peers"}
    assert d.proc.poll() is None


def test_garbage_from_peers_is_counted_and_ignored(daemons: Any) -> None:
    d = daemons(CLEAN)
    sender, ground = d.connect("sender_side"), d.connect("ground_side")
    d.wait_peers(sender, ground)
    for parts in ([b"X"], [b"F"], [b"F", b"short"], [b"F", numbered(0), b"extra"], [b"H", b"x"]):
        sender.sock.send_multipart(parts)
    sender.sock.send(b"F" + bytes(100_000))  # larger than a frame: ZMQ drops the connection unread
    sender.close()
    d.peers.remove(sender)
    sender = d.connect("sender_side")
    d.wait_peers(sender, ground)
    sender.send_frame(numbered(7))
    assert ground.recv_frame(3000) == numbered(7)
    stats = d.request({"cmd": "stats"})
    assert stats["garbage"]["sender"] == 5 and stats["forward"]["delivered"] == 1
    assert d.proc.poll() is None


def test_frames_without_a_destination_peer_are_dropped_as_no_peer(daemons: Any) -> None:
    d = daemons(CLEAN)
    sender = d.connect("sender_side")
    for i in range(20):
        assert sender.send_frame(numbered(i))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fwd = d.request({"cmd": "stats"})["forward"]
        if fwd["dropped"]["no_peer"] == 20:
            break
        time.sleep(0.05)
    assert fwd["dropped"]["no_peer"] == 20 and fwd["delivered"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_and_stats_are_logged(daemons: Any, sig: int) -> None:
    d = daemons(CLEAN)
    stats = d.wait_event("stats", 5)
    assert stats["forward"]["in"] == 0 and "return" in stats
    assert d.stop(sig) == 0
    d.wait_event("stop", 5)


def test_bad_config_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("forward: {rate_bps: 2400, gilbert_elliott: {p: 1.5, r: 0.1}}\nreturn: {rate_bps: 2400}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "link_sim.daemon", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "forward.gilbert_elliott.p: must be between 0 and 1, got 1.5" in json.loads(proc.stderr)["error"]


def curve_setup(tmp_path: Path, allowed: list[str]) -> tuple[dict, Any]:
    keys = tmp_path / "keys"
    for name in ("link", "sender", "intruder"):
        generate_keypair(keys, name)
    curve = {"public_key": str(keys / "link.key"), "secret_key": str(keys / "link.key_secret")}
    if allowed:
        curve["allowed_clients"] = [str(keys / f"{n}.key") for n in allowed]
    server = load_key(keys / "link.key")

    def client(name: str) -> CurveKeys:
        return CurveKeys(load_key(keys / f"{name}.key"), load_key(keys / f"{name}.key_secret"), server_public=server)

    return {**CLEAN, "curve": curve}, client


def test_curve_encrypts_and_rejects_clients_without_the_server_key(daemons: Any, tmp_path: Path) -> None:
    config, client = curve_setup(tmp_path, allowed=[])
    d = daemons(config)
    good = client("sender")
    sender, ground = d.connect("sender_side", good), d.connect("ground_side", good)
    d.wait_peers(sender, ground, curve=good)
    sender.send_frame(numbered(1))
    assert ground.recv_frame(3000) == numbered(1)
    plain = d.connect("sender_side")  # no CURVE: the handshake fails, nothing gets through
    plain.sock.send_multipart([b"F", numbered(2)])
    assert ground.recv_frame(500) is None
    stats = d.request({"cmd": "stats"}, curve=good)
    assert stats["forward"]["in"] == 1 and stats["garbage"]["sender"] == 0


def test_curve_allowed_clients_admit_listed_keys_only(daemons: Any, tmp_path: Path) -> None:
    config, client = curve_setup(tmp_path, allowed=["sender"])
    d = daemons(config)
    good = client("sender")
    sender, ground = d.connect("sender_side", good), d.connect("ground_side", good)
    d.wait_peers(sender, ground, curve=good)
    sender.send_frame(numbered(1))
    assert ground.recv_frame(3000) == numbered(1)
    intruder = d.connect("sender_side", client("intruder"))
    intruder.send_frame(numbered(2))
    assert ground.recv_frame(500) is None  # refused by the ZAP handler
    assert d.request({"cmd": "stats"}, curve=good)["forward"]["in"] == 1
