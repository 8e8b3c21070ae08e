"""Launch the link, ground-station and sender daemons (and the web page) as child processes on loopback.

Used by ``satgw demo``, the benchmarks and the end-to-end tests: free ports,
one log file per daemon, readiness by ping (the web page: by ``/healthz``),
SIGTERM (then SIGKILL) on stop, SIGKILL on demand, and small helpers to talk
to the daemons' control sockets. With ``metrics=True`` every daemon serves
Prometheus metrics on a loopback port (:attr:`Daemons.metrics_url`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from gateway.errors import DaemonError, SatgwError
from gateway.paths import config_dir
from gateway.transport.keyfile import ensure_key_file
from gateway.transport.lazy_pirate import ask


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


#: Each daemon's control endpoint key in :attr:`Daemons.ep`, and the command that proves it is up.
CONTROL = {"link": "link_control", "receiver": "receiver", "sender": "sender"}


class Daemons:
    """The three daemons as child processes; stopped with SIGTERM (then SIGKILL) on exit.

    Endpoints are fresh loopback ports (:attr:`ep`); each daemon logs to
    ``<run_dir>/<name>.log`` and the link traces every frame's fate to
    :attr:`trace`. ``extra_args`` are appended to a daemon's command line (a
    later ``--config`` replaces the shipped one). All three share one frame
    key (:attr:`frame_key`, made in the run folder) as the shipped configs
    intend: frames are authenticated and only the two daemons may take a side
    of the link. ``link_auth=False`` starts the link without it (an open link,
    for tests of what the ground does with forged frames).
    """

    def __init__(
        self,
        run_dir: Path,
        link: str,
        time_scale: float,
        bundle: str | None = None,
        *,
        seed: int | None = None,
        extra_args: dict[str, list[str]] | None = None,
        link_auth: bool = True,
        metrics: bool = False,
        web_port: int | None = None,
    ) -> None:
        self.run_dir = run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.frame_key = run_dir / "frame.key"
        ensure_key_file(self.frame_key)
        key = ["--auth-key", str(self.frame_key)]
        p = free_ports(9)
        self.ep = {
            "sender_side": f"tcp://127.0.0.1:{p[0]}", "ground_side": f"tcp://127.0.0.1:{p[1]}",
            "link_control": f"tcp://127.0.0.1:{p[2]}", "sender": f"tcp://127.0.0.1:{p[3]}",
            "receiver": f"tcp://127.0.0.1:{p[4]}",
        }
        self.outbox = run_dir / "outbox"
        self.trace = run_dir / "link-trace.jsonl"
        py = [sys.executable, "-m", "gateway.cli"]
        self.commands = {
            "link": py + ["link", "--config", link, "--time-scale", str(time_scale),
                          "--sender-side", self.ep["sender_side"], "--ground-side", self.ep["ground_side"],
                          "--control", self.ep["link_control"], "--trace", str(self.trace),
                          "--stats-interval", "5"] + (["--seed", str(seed)] if seed is not None else [])
                    + (key if link_auth else []),
            # The shipped daemon configs, with endpoints and state folders of this run.
            "receiver": py + ["receiver", "--config", str(config_dir() / "daemons" / "receiver.yaml"),
                              "--store", str(run_dir / "frames.db"), "--outbox", str(self.outbox),
                              "--control", self.ep["receiver"], "--link-endpoint", self.ep["ground_side"],
                              "--link-control", self.ep["link_control"], *key],
            "sender": py + ["sender", "--config", str(config_dir() / "daemons" / "sender.yaml"),
                            "--spool", str(run_dir / "spool.db"), "--inbox", str(run_dir / "inbox"),
                            "--control", self.ep["sender"], "--link-endpoint", self.ep["sender_side"],
                            "--link-control", self.ep["link_control"], *key],
        }
        #: daemon name -> its /metrics URL (empty without ``metrics``)
        self.metrics_url: dict[str, str] = {}
        if metrics:
            for name, port in zip(("link", "receiver", "sender"), p[5:8]):
                self.commands[name] += ["--metrics-listen", f"127.0.0.1:{port}"]
                self.metrics_url[name] = f"http://127.0.0.1:{port}/metrics"
        # The web page, started only when asked (start(("web",))): port 0 means any free one.
        web = p[8] if not web_port else web_port
        self.web_url = f"http://127.0.0.1:{web}/"
        self.commands["web"] = py + ["web", "--outbox", str(self.outbox), "--store", str(run_dir / "frames.db"),
                                     "--receiver", self.ep["receiver"], "--sender", self.ep["sender"],
                                     "--link-control", self.ep["link_control"], "--listen", f"127.0.0.1:{web}"]
        if bundle:
            for name in ("receiver", "sender"):
                self.commands[name] += ["--bundle", str(bundle)]
        for name, args in (extra_args or {}).items():
            self.commands[name] += list(args)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, names: tuple[str, ...] = ("link", "receiver", "sender")) -> None:
        """Start the named daemons, in the order given; logs go to ``<run_dir>/<name>.log``."""
        for name in names:
            with open(self.run_dir / f"{name}.log", "ab") as log:
                self.procs[name] = subprocess.Popen(self.commands[name], stdout=log, stderr=subprocess.STDOUT,
                                                    cwd=self.run_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def ping(self, name: str, timeout: float = 0.5) -> bool:
        """Whether daemon ``name`` answers on its control socket (the web page: on ``/healthz``)."""
        if name == "web":
            try:
                with urllib.request.urlopen(self.web_url + "healthz", timeout=timeout) as r:
                    return r.status == 200
            except (OSError, urllib.error.URLError):
                return False
        try:
            return bool(request(self.ep[CONTROL[name]], {"cmd": "ping"}, timeout=timeout, retries=1).get("ok"))
        except SatgwError:
            return False

    def wait_ready(self, names: tuple[str, ...] = ("link", "receiver", "sender"), timeout: float = 120.0) -> None:
        """Wait until every named daemon answers; raise SatgwError (with a log's end) if one exits or none do."""
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting:
            self.check_alive()
            waiting = [n for n in waiting if not self.ping(n)]
            if waiting and time.monotonic() > deadline:
                raise SatgwError(f"{', '.join(waiting)} did not answer within {timeout:g} s (logs in {self.run_dir})")

    def kill(self, name: str) -> None:
        """SIGKILL one daemon (a crash: no clean-up of any kind) and reap it."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

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


def request(endpoint: str, req: dict[str, Any], timeout: float = 30.0, retries: int = 3) -> dict[str, Any]:
    """One msgpack request to a daemon's control socket (lazy pirate: retries, then DaemonError)."""
    return ask(endpoint, req, timeout_s=timeout, retries=retries)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something true and return that; DaemonError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise DaemonError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def link_stats(endpoint: str) -> dict[str, Any]:
    """The link daemon's counters, or {} when it does not answer."""
    try:
        return request(endpoint, {"cmd": "stats"}, timeout=2.0)
    except SatgwError:
        return {}


