"""Benchmark the link simulator.

1. End to end on loopback: a sender DEALER (own process) -> link daemon (own
   process, no impairment, near-infinite rate, no delay) -> ground DEALER (this
   process).  Prints frames/s delivered and whether the 20,000 frames/s target
   is met.
2. Channel models alone on the virtual clock: frames/s through the ``clean``
   and ``harsh`` presets' forward channels (offer + poll).

Usage: python tools/bench_link.py [--frames N] [--model-frames N]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import yaml
import zmq

from gateway.transport.contact_plan import AlwaysUp
from link_sim.config import load_link_config
from link_sim.link import build_channel
from gateway.transport.link_peer import FRAME, LinkPeer

FRAME_SIZE = 450
TARGET_FPS = 20_000


def _sender(endpoint: str, n: int, ready: mp.Event, go: mp.Event) -> None:
    ctx = zmq.Context()
    peer = LinkPeer(ctx, endpoint)
    ready.set()
    go.wait(30)
    frame = bytes(FRAME_SIZE)
    sock = peer.sock
    more = int(zmq.SNDMORE)
    for _ in range(n):
        # blocking sends: ZMQ's high-water mark paces the sender; plain send() skips pyzmq's multipart helper
        sock.send(FRAME, more)
        sock.send(frame)
    time.sleep(1.0)  # let ZMQ flush before the socket closes
    peer.close()
    ctx.term()


def bench_end_to_end(n: int) -> float:
    """Frames per second delivered sender -> link -> ground on loopback."""
    cfg = {
        "endpoints": {"sender_side": "tcp://127.0.0.1:*", "ground_side": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"},
        "stats_interval_s": 3600,
        "forward": {"rate_bps": 1e12, "queue": {"frames": 1_000_000}},
        "return": {"rate_bps": 1e12},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        daemon = subprocess.Popen([sys.executable, "-m", "link_sim.daemon", "--config", str(path)], stderr=subprocess.PIPE, text=True)
        try:
            assert daemon.stderr is not None
            start = json.loads(daemon.stderr.readline())
            ctx = zmq.Context()
            ground = LinkPeer(ctx, start["ground_side"])
            ready, go = mp.Event(), mp.Event()
            proc = mp.Process(target=_sender, args=(start["sender_side"], n, ready, go))
            proc.start()
            ready.wait(30)
            control = ctx.socket(zmq.REQ)
            control.connect(start["control"])
            for _ in range(200):  # wait until the link knows both peers
                ground.send_hello()
                control.send(msgpack.packb({"cmd": "stats"}))
                if msgpack.unpackb(control.recv())["peers"]["ground"]:
                    break
                time.sleep(0.01)
            cpu_before = _cpu_seconds(daemon.pid)
            go.set()
            sock = ground.sock
            noblock, rcvmore = int(zmq.NOBLOCK), int(zmq.RCVMORE)
            got = 0
            first = last = 0.0
            while got < n:
                if not sock.poll(2000, zmq.POLLIN):
                    break
                while got < n:
                    try:
                        kind = sock.recv(noblock)
                    except zmq.Again:
                        break
                    payload = sock.recv() if sock.getsockopt(rcvmore) else b""
                    if kind == FRAME and len(payload) == FRAME_SIZE:
                        got += 1
                        last = time.perf_counter()
                        if got == 1:
                            first = last
            cpu_s = _cpu_seconds(daemon.pid) - cpu_before
            proc.join(10)
            control.send(msgpack.packb({"cmd": "stats"}))
            stats = msgpack.unpackb(control.recv())["forward"]
            ground.close()
            control.close()
            ctx.term()
        finally:
            daemon.terminate()
            daemon.wait(10)
    fps = (got - 1) / (last - first) if got > 1 and last > first else 0.0
    lost = n - got
    print(f"end to end: {got}/{n} frames of {FRAME_SIZE} B delivered in {last - first:.2f} s "
          f"-> {fps:,.0f} frames/s ({fps * FRAME_SIZE * 8 / 1e6:.1f} Mbit/s); "
          f"not delivered: {lost} (link counters: in={stats['in']} dropped={stats['dropped']})")
    print(f"target {TARGET_FPS:,} frames/s: {'MET' if fps >= TARGET_FPS else 'NOT MET'}")
    if cpu_s > 0:
        print(f"link daemon CPU: {cpu_s:.2f} s for {got} frames = {cpu_s / max(got, 1) * 1e6:.1f} us/frame "
              f"-> capacity {got / cpu_s:,.0f} frames/s on one free core (the three processes share this host's cores)")
    return fps


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_models(n: int) -> None:
    """Frames per second through preset channel models on the virtual clock."""
    frame = bytes(FRAME_SIZE)
    for name in ("clean", "geo", "harsh"):
        cfg = load_link_config(name)
        ch = build_channel(cfg.forward, AlwaysUp(), 0)
        spacing = cfg.forward.frame_time_s * 1.01  # just under the link rate: no tail drop
        t0 = time.perf_counter()
        for i in range(n):
            ch.offer(frame, i * spacing)
        out = ch.poll(math.inf)
        dt = time.perf_counter() - t0
        print(f"channel model {name:6s}: {n / dt:,.0f} frames/s on the virtual clock "
              f"({len(out)} delivered; {n * spacing / 3600:,.0f} simulated hours in {dt:.2f} s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200_000, help="frames sent end to end")
    p.add_argument("--model-frames", type=int, default=200_000, help="frames per channel-model run")
    args = p.parse_args()
    fps = bench_end_to_end(args.frames)
    bench_models(args.model_frames)
    print("BENCH_JSON " + json.dumps({"end_to_end_frames_per_s": round(fps), "target": TARGET_FPS,
                                      "met": fps >= TARGET_FPS}))
    return 0 if fps >= TARGET_FPS else 1


if __name__ == "__main__":
    sys.exit(main())
