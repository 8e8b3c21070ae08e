"""Launch the link, ground-station and sender daemons as child processes on loopback.

Used by ``satgw demo`` and the end-to-end benchmark: free ports, one log file
per daemon, SIGTERM (then SIGKILL) on stop, and small helpers to talk to the
daemons' control sockets.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.errors import SatgwError
from gateway.paths import config_dir


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Daemons:
    """The three daemons as child processes; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, run_dir: Path, link: str, time_scale: float, bundle: str | None) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        p = free_ports(5)
        self.ep = {
            "sender_side": f"tcp://127.0.0.1:{p[0]}", "ground_side": f"tcp://127.0.0.1:{p[1]}",
            "link_control": f"tcp://127.0.0.1:{p[2]}", "sender": f"tcp://127.0.0.1:{p[3]}",
            "receiver": f"tcp://127.0.0.1:{p[4]}",
        }
        self.outbox = run_dir / "outbox"
        py = [sys.executable, "-m", "gateway.cli"]
        self.commands = {
            "link": py + ["link", "--config", link, "--time-scale", str(time_scale),
                          "--sender-side", self.ep["sender_side"], "--ground-side", self.ep["ground_side"],
                          "--control", self.ep["link_control"], "--trace", str(run_dir / "link-trace.jsonl"),
                          "--stats-interval", "5"],
            # The shipped daemon configs, with endpoints and state folders of this run.
            "receiver": py + ["receiver", "--config", str(config_dir() / "daemons" / "receiver.yaml"),
                              "--store", str(run_dir / "frames.db"), "--outbox", str(self.outbox),
                              "--control", self.ep["receiver"], "--link-endpoint", self.ep["ground_side"],
                              "--link-control", self.ep["link_control"]],
            "sender": py + ["sender", "--config", str(config_dir() / "daemons" / "sender.yaml"),
                            "--spool", str(run_dir / "spool.db"), "--inbox", str(run_dir / "inbox"),
                            "--control", self.ep["sender"], "--link-endpoint", self.ep["sender_side"],
                            "--link-control", self.ep["link_control"]],
        }
        if bundle:
            for name in ("receiver", "sender"):
                self.commands[name] += ["--bundle", str(bundle)]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, names: tuple[str, ...] = ("link", "receiver", "sender")) -> None:
        """Start the named daemons, in the order given; logs go to ``<run_dir>/<name>.log``."""
        for name in names:
            log = open(self.run_dir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(self.commands[name], stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def terminate(self, name: str, timeout: float = 15.0) -> int:
        """SIGTERM one daemon and wait for it (the link flushes its trace on the way out)."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def check_alive(self) -> None:
        """Raise SatgwError with the end of its log if any daemon has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SatgwError(f"the {name} daemon exited with code {proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every daemon, SIGKILL what is still running after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request(endpoint: str, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One msgpack request to a daemon's control socket (lazy pirate: retries, then DaemonError)."""
    import zmq

    from gateway.transport.lazy_pirate import LazyPirate

    ctx = zmq.Context.instance()
    client = LazyPirate(ctx, endpoint, timeout_s=timeout, retries=3)
    try:
        return client.request(req)
    finally:
        client.close()


def link_stats(endpoint: str) -> dict[str, Any]:
    """The link daemon's counters, or {} when it does not answer."""
    try:
        return request(endpoint, {"cmd": "stats"}, timeout=2.0)
    except SatgwError:
        return {}


