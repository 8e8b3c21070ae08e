"""The soak: many images through a brutal link while the daemons are killed and their disks fail.

Reproduces issue 16's torture run as a benchmark, on loopback:

* a custom link (both directions): Gilbert-Elliott bursts losing 30 % of the
  frames, bit errors at 1e-4 (a third of the surviving 450-byte frames are
  corrupted), 3 % duplicates, up to 2 s of jitter, and outages (20 s of every
  80, link time);
* ``--images`` photographs (crops of scikit-image's samples), half through
  ``satgw send`` (retried with the same ``--request-id`` while the sender is
  down or refuses), half dropped into the inbox;
* ``--kills`` ``kill -9`` of a random daemon at random times, each restarted
  after a random pause;
* disk episodes on two small tmpfs filesystems of their own: the ground's
  outbox and the sender's spool each fill up (a filler file takes every free
  byte) and the outbox goes read-only for a while; the sender is once
  restarted onto a read-only spool (it must refuse to start, then start once
  the disk is writable).

The disk episodes need a private mount namespace: the script re-runs itself
under ``unshare -m`` (``unshare -rm`` when not root) and says so when it
cannot (then it runs without them). Nothing outside the run folder is
mounted or touched.

At the end it stops the chaos, restores the disks, lets the system settle and
prints: images submitted, delivered (exactly one output whose PNG equals a
local decode of the sender's bitstream), duplicates (a second job or output
for one image), lost (no output and the job failed, expired or vanished),
pixel mismatches and stuck jobs (still on their way when the settle time ran
out), with the wall time. JSON goes to ``OUT/soak.json``. Usage::

    python tools/soak.py --images 200 --kills 60 --out soak-out
    python tools/soak.py --images 12 --kills 6 --duration 50   # the short soak the tests run
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gateway.codec.image_io import png_bytes
from gateway.eval.launcher import Daemons, request, wait_for
from gateway.paths import config_dir

_IN_NAMESPACE = "SATGW_SOAK_NAMESPACE"
PRESET = """\
name: brutal
description: 30 % burst loss, BER 1e-4, 3 % duplicates, 2 s jitter, 20 s outages every 80 s
frame_size: 450
seed: {seed}
time_scale: 1.0
stats_interval_s: 10
availability: {{periodic: {{period_s: 80, duration_s: 60, offset_s: 0}}}}
forward: &brutal
  rate_bps: 9600
  queue: {{frames: 64}}
  delay: {{propagation_s: 0.1, jitter_s: 2.0}}
  gilbert_elliott: {{mean_burst_frames: 6, average_loss: 0.30, loss_good: 0.05, loss_bad: 0.9}}
  bit_errors: {{ber: 1.0e-4}}
  duplicate: {{p: 0.03}}
return: *brutal
"""


def log(msg: str) -> None:
    """One progress line on stderr, with the wall time."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def images(n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` different PNG crops (64..128 px) of scikit-image's photographs, each with a unique name."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)][..., :3]
        size = int(rng.integers(64, 129))
        y, x = int(rng.integers(0, img.shape[0] - size)), int(rng.integers(0, img.shape[1] - size))
        out.append((f"soak{i:04d}.png", png_bytes(np.ascontiguousarray(img[y:y + size, x:x + size]))))
    return out


# --- disks --------------------------------------------------------------------------------------


class Disk:
    """A small tmpfs of its own (in this process's private mount namespace) that can fill up or go read-only."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
        self.filler = path / ".filler"

    def fill(self) -> None:
        """Take every free byte (ENOSPC for everyone else)."""
        chunk = b"\0" * (1 << 20)
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
            try:  # the last partial megabyte too
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass

    def free(self) -> None:
        """Give the space back."""
        self.filler.unlink(missing_ok=True)

    def read_only(self, on: bool) -> bool:
        """Remount read-only (True) or writable (False); False when the kernel refuses (files open for writing)."""
        r = subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], capture_output=True)
        return r.returncode == 0

    def unmount(self) -> None:
        self.read_only(False)
        self.free()


def enter_namespace(argv: list[str]) -> None:
    """Re-run this script in a private mount namespace (so tmpfs mounts stay ours); returns only if impossible."""
    if os.environ.get(_IN_NAMESPACE) or not shutil.which("unshare"):
        return
    cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    probe = subprocess.run([*cmd, "true"], capture_output=True)
    if probe.returncode != 0:
        log(f"no private mount namespace ({probe.stderr.decode().strip()}): running without disk episodes")
        return
    env = {**os.environ, _IN_NAMESPACE: "1"}
    os.execvpe(cmd[0], [*cmd, sys.executable, os.path.abspath(__file__), *argv], env)


# --- the run ------------------------------------------------------------------------------------


class Soak:
    """One soak run: the daemons, the submitters, the chaos, the verdict."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.rng = random.Random(a.seed)
        self.out = Path(a.out).resolve()
        if self.out.exists():
            shutil.rmtree(self.out)
        self.run_dir = self.out / "run"
        self.run_dir.mkdir(parents=True)
        self.disks: dict[str, Disk] = {}
        if os.environ.get(_IN_NAMESPACE) and not a.no_disk_faults:
            self.disks = {"spool": Disk(self.run_dir / "spool-disk", 96), "outbox": Disk(self.run_dir / "outbox-disk", 96)}
        self.spool = (self.disks["spool"].path if self.disks else self.run_dir) / "spool.db"
        self.outbox = (self.disks["outbox"].path if self.disks else self.run_dir) / "outbox"
        preset = self.run_dir / "brutal.yaml"
        preset.write_text(PRESET.format(seed=a.seed))
        receiver_cfg = yaml.safe_load((config_dir() / "daemons" / "receiver.yaml").read_text())
        receiver_cfg["decode"].update(retry_initial_s=0.5, retry_max_s=4.0)  # recover soon after a disk episode
        (self.run_dir / "receiver.yaml").write_text(yaml.safe_dump(receiver_cfg))
        self.d = Daemons(self.run_dir, str(preset), a.time_scale, seed=a.seed, extra_args={
            "sender": ["--spool", str(self.spool)],
            "receiver": ["--config", str(self.run_dir / "receiver.yaml"), "--outbox", str(self.outbox)],
        })
        self.inbox = self.run_dir / "inbox"
        self.lock = threading.Lock()  # guards the launcher's process table
        self.owner = {name: threading.Lock() for name in ("link", "receiver", "sender")}  # one actor per daemon
        self.stop = threading.Event()
        self.kills: dict[str, int] = {"link": 0, "receiver": 0, "sender": 0}
        self.episodes: list[dict[str, Any]] = []
        self.cli_ids: dict[str, int] = {}
        self.submitted: set[str] = set()
        self.errors: list[str] = []

    # --- daemons --------------------------------------------------------------------------------

    def restart(self, name: str, timeout: float = 300) -> None:
        """Start ``name`` until it answers (a sender on a full or read-only spool exits: started again later)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                proc = self.d.procs.get(name)
                if proc is None or proc.poll() is not None:
                    self.d.procs.pop(name, None)
                    self.d.start((name,))
                    proc = self.d.procs[name]
            while proc.poll() is None and not self.d.ping(name):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not answer within {timeout:g} s")
                time.sleep(0.2)
            if proc.poll() is None:
                return
            log(f"{name} exited with {proc.returncode} on start; trying again")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start within {timeout:g} s")
            time.sleep(2)

    def kill(self, name: str, count: bool = True) -> None:
        """``kill -9`` one daemon (``count``: one of the run's random kills, not part of a disk episode)."""
        with self.lock:
            if name in self.d.procs:
                self.d.kill(name)
                if count:
                    self.kills[name] += 1

    # --- submitting -------------------------------------------------------------------------------

    def submit_cli(self, name: str, data: bytes) -> None:
        """``satgw send`` until accepted, always with the same request id (a retry never makes a second job)."""
        path = self.run_dir / "to-send" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        rid = f"soak-{name}"
        while not self.stop.is_set():
            r = subprocess.run([sys.executable, "-m", "gateway.cli", "send", str(path), "--sender", self.d.ep["sender"],
                                "--packets", str(self.rng.choice((2, 3, 4))), "--codec", "webp", "--request-id", rid,
                                "--timeout", "5", "--retries", "1"], capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                with self.lock:
                    self.cli_ids[name] = int(r.stdout.strip())
                return
            time.sleep(1.0)  # the sender is down or refuses for now (a full spool): the same request again

    def submit_inbox(self, name: str, data: bytes) -> None:
        """Drop the file into the inbox the way a copy tool does: written aside, then renamed in."""
        self.inbox.mkdir(exist_ok=True)
        tmp = self.inbox / f".{name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, self.inbox / name)

    def submitter(self, imgs: list[tuple[str, bytes]], span_s: float) -> None:
        threads = []
        for i, (name, data) in enumerate(imgs):
            if self.stop.is_set():
                break
            with self.lock:
                self.submitted.add(name)
            if i % 2 == 0:
                t = threading.Thread(target=self.submit_cli, args=(name, data), daemon=True)
                t.start()
                threads.append(t)
                if len(threads) >= 4:  # a few clients at a time
                    threads.pop(0).join()
            else:
                self.submit_inbox(name, data)
            time.sleep(span_s / max(1, len(imgs)))
        for t in threads:
            t.join()

    # --- chaos ------------------------------------------------------------------------------------

    def episode(self, kind: str, disk: str, hold_s: float) -> None:
        d = self.disks[disk]
        rec = {"kind": kind, "disk": disk, "at": round(time.monotonic() - self.t0, 1), "hold_s": round(hold_s, 1)}
        if kind == "full":
            d.fill()
            time.sleep(hold_s)
            d.free()
        elif kind == "read-only":
            rec["done"] = self._read_only(d)
            time.sleep(hold_s)
            d.read_only(False)
        else:  # restart the sender onto a read-only spool: it must refuse, then start once writable
            with self.owner["sender"]:
                self.kill("sender", count=False)
                rec["done"] = self._read_only(d)
                with self.lock:
                    self.d.start(("sender",))
                    proc = self.d.procs["sender"]
                try:
                    rec["sender_refused"] = proc.wait(timeout=120) != 0
                except subprocess.TimeoutExpired:
                    rec["sender_refused"] = False
                d.read_only(False)
                with self.lock:
                    self.d.procs.pop("sender", None)
                self.restart("sender")
        self.episodes.append(rec)
        log(f"disk episode: {rec}")

    @staticmethod
    def _read_only(d: Disk) -> bool:
        # The kernel refuses while a file is open for writing (a decode writing its PNG): try for a while.
        for _ in range(50):
            if d.read_only(True):
                return True
            time.sleep(0.1)
        return False

    def _events(self, events: list[tuple[float, str, Any]]) -> None:
        """Run timed chaos events in order (kills and disk episodes run in two threads, so they overlap)."""
        for at, kind, what in events:
            while time.monotonic() - self.t0 < at:
                if self.stop.wait(0.2):
                    return
            try:
                if kind == "kill":
                    with self.owner[what]:
                        self.kill(what)
                        time.sleep(self.rng.uniform(0.5, 5.0))
                        self.restart(what)
                else:
                    self.episode(kind, what, self.rng.uniform(5, 12))
            except Exception as e:
                self.errors.append(f"{kind} {what}: {type(e).__name__}: {e}")
                log(f"chaos step failed: {self.errors[-1]}")

    def chaos(self, duration: float) -> None:
        """Kills and disk episodes spread over ``duration`` seconds."""
        kills = sorted((self.rng.uniform(5, duration), "kill", self.rng.choice(("link", "receiver", "sender")))
                       for _ in range(self.a.kills))
        disks: list[tuple[float, str, Any]] = []
        if self.disks:
            plan = [("full", "outbox"), ("read-only", "outbox"), ("full", "spool"), ("restart-read-only", "spool")]
            disks = [(duration * (i + 1) / (len(plan) + 1), kind, disk) for i, (kind, disk) in enumerate(plan)]
        episodes = threading.Thread(target=self._events, args=(disks,), daemon=True)
        episodes.start()
        self._events(kills)
        episodes.join()

    # --- the verdict ------------------------------------------------------------------------------

    def jobs(self) -> list[tuple[int, str, str, bytes | None]]:
        db = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True)
        try:
            return [(int(i), n, s, None if b is None else bytes(b)) for i, n, s, b in
                    db.execute("SELECT id, source_name, state, bitstream FROM messages")]
        finally:
            db.close()

    def settled(self) -> bool:
        active = {"accepted", "encoded", "in_flight", "held"}
        try:
            jobs = self.jobs()
        except sqlite3.Error:
            return False
        names = {n for _, n, _, _ in jobs}
        return self.submitted <= names and not any(s in active for _, _, s, _ in jobs) and not any(
            self.inbox.glob("soak*.png"))

    def verdict(self, wall_s: float) -> dict[str, Any]:
        from PIL import Image

        from gateway.codec.registry import decode_any

        jobs = self.jobs()
        by_name: dict[str, list[tuple[int, str, bytes | None]]] = {}
        for mid, name, state, bits in jobs:
            by_name.setdefault(name, []).append((mid, state, bits))
        records = {int(j.stem): json.loads(j.read_text()) for j in self.outbox.glob("*.json")} \
            if self.outbox.is_dir() else {}
        unnamed = sum(1 for r in records.values() if r.get("source_name") is None)
        delivered = duplicates = lost = mismatches = stuck = 0
        problems = []
        for name in sorted(self.submitted):
            own = by_name.get(name, [])
            outs = [mid for mid, _, _ in own if mid in records]
            duplicates += max(0, len(own) - 1)  # a second job makes a second picture sooner or later
            states = [s for _, s, _ in own]
            if any(s in ("accepted", "encoded", "in_flight", "held") for s in states):
                stuck += 1
                problems.append(f"{name}: stuck in {states}")
                continue
            if not outs or "delivered" not in states:
                lost += 1
                problems.append(f"{name}: lost (jobs {states}, outputs {outs})")
                continue
            mid, _, bits = next(j for j in own if j[1] == "delivered")
            png = self.outbox / f"{mid}.png"
            same = bits is not None and png.exists() and np.array_equal(
                decode_any(bits), np.asarray(Image.open(png).convert("RGB")))
            if same and mid in outs:
                delivered += 1
            else:
                mismatches += 1
                problems.append(f"{name}: output {outs} differs from the local decode of message {mid}")
        known = {mid for mid, _, _, _ in jobs}
        duplicates += sum(1 for mid in records if mid not in known)  # an output no job of ours made
        return {"images": self.a.images, "submitted": len(self.submitted), "delivered": delivered,
                "duplicates": duplicates, "lost": lost, "mismatches": mismatches, "stuck": stuck,
                "records_without_name": unnamed,
                "wall_s": round(wall_s, 1), "kills": dict(self.kills), "disk_episodes": self.episodes,
                "chaos_errors": self.errors, "problems": problems[:50], "time_scale": self.a.time_scale,
                "link": "30% burst loss, BER 1e-4, 3% duplicates, 2 s jitter, 20 s outages every 80 s (link time)"}

    def run(self) -> dict[str, Any]:
        a = self.a
        self.t0 = time.monotonic()
        imgs = images(a.images, a.seed)
        self.d.start(("link", "receiver", "sender"))
        self.d.wait_ready(timeout=300)
        log(f"daemons up; {a.images} images, {a.kills} kills over {a.duration:g} s, disks: "
            f"{'tmpfs episodes' if self.disks else 'no episodes'}")
        chaos = threading.Thread(target=self.chaos, args=(a.duration,), daemon=True)
        chaos.start()
        self.submitter(imgs, a.duration * 0.6)
        chaos.join(timeout=a.duration + 600)
        log("chaos over: restoring disks and daemons, then settling")
        for disk in self.disks.values():
            disk.read_only(False)
            disk.free()
        for name in ("link", "receiver", "sender"):
            self.restart(name)
        try:
            wait_for(self.settled, a.settle, "every job to finish", step=1.0)
        except Exception as e:
            log(f"not settled: {e}")
        self.stop.set()
        result = self.verdict(time.monotonic() - self.t0)
        return result

    def close(self) -> None:
        self.stop.set()
        self.d.stop()
        for disk in self.disks.values():
            try:
                disk.unmount()
            except Exception:
                pass


def main(argv: list[str] | None = None) -> int:
    """Run the soak; exit 0 when every image was delivered exactly once and pixel-identical."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--kills", type=int, default=60, help="kill -9s, spread over the three daemons")
    p.add_argument("--duration", type=float, default=600.0, help="wall seconds of chaos (kills, disk episodes)")
    p.add_argument("--settle", type=float, default=900.0, help="wall seconds allowed to finish afterwards")
    p.add_argument("--time-scale", type=float, default=20.0, help="link seconds per wall second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="soak-out")
    p.add_argument("--no-disk-faults", action="store_true", help="no tmpfs, no disk episodes")
    a = p.parse_args(argv)
    if not a.no_disk_faults:
        enter_namespace(argv)
    soak = Soak(a)
    try:
        result = soak.run()
    finally:
        soak.close()
    (soak.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("submitted", "delivered", "duplicates", "lost", "mismatches", "stuck",
                                             "wall_s", "kills")}))
    for line in result["problems"]:
        print(f"  {line}")
    ok = result["submitted"] == result["delivered"] == a.images and not (
        result["duplicates"] or result["lost"] or result["mismatches"] or result["stuck"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
