"""End-to-end tests: real link, ground-station and sender processes on loopback, started by the launcher.

Every wait is bounded and waits on what the daemons report (outputs,
counters), never on a fixed sleep; links run time-scaled so a transfer takes
seconds. Helpers here are reused by the other ``test_daemons_*`` modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from gateway.codec.image_io import png_bytes
from gateway.eval.launcher import CONTROL, Daemons, request, wait_for

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def make_images(count: int, size: int = 80, width: int | None = None) -> list[tuple[str, bytes]]:
    """Distinct small PNG crops (``width`` x ``size`` pixels; square by default) of skimage sample photos."""
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee()]
    w = width or size
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        y = (i * 13) % (src.shape[0] - size)
        x = (i * 29) % (src.shape[1] - w)
        out.append((f"img{i:03d}.png", png_bytes(np.ascontiguousarray(src[y : y + size, x : x + w, :3]))))
    return out


class Rig(Daemons):
    """The launcher's three daemons (:class:`gateway.eval.launcher.Daemons`) plus what the tests ask of them."""

    def __init__(self, tmp: Path, preset: str | Path = "harsh", time_scale: float = 50.0, seed: int = 1,
                 sender_args: list[str] | None = None, receiver_args: list[str] | None = None,
                 link_auth: bool = True, metrics: bool = False) -> None:
        super().__init__(tmp, str(preset), time_scale, seed=seed,
                         extra_args={"sender": sender_args or [], "receiver": receiver_args or []},
                         link_auth=link_auth, metrics=metrics)
        self.tmp = self.run_dir

    def start(self, names: tuple[str, ...] = ("link", "receiver", "sender"),  # type: ignore[override]
              ready: tuple[str, ...] | None = None) -> "Rig":
        """Start ``names`` and wait until ``ready`` (default: all of them) answer a ping."""
        super().start(names)
        self.wait_ready(names if ready is None else ready)
        return self

    def restart(self, name: str) -> None:
        super().start((name,))
        self.wait_ready((name,))

    def ask(self, name: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return request(self.ep[CONTROL[name]], req, timeout=timeout)

    def submit(self, name: str, data: bytes, **opts: Any) -> int:
        reply = self.ask("sender", {"cmd": "send", "name": name, "image": data, **opts})
        assert reply.get("ok"), reply
        return int(reply["id"])

    def outputs(self) -> dict[int, dict[str, Any]]:
        out = {}
        if self.outbox.is_dir():
            for j in self.outbox.glob("*.json"):
                out[int(j.stem)] = json.loads(j.read_text())
        return out

    def sender_status(self) -> dict[str, Any]:
        return self.ask("sender", {"cmd": "status"})

    def receiver_status(self) -> dict[str, Any]:
        return self.ask("receiver", {"cmd": "status"})

    def link_stats(self) -> dict[str, Any]:
        return self.ask("link", {"cmd": "stats"})


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
    rec = rig.receiver_status()
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
    r = subprocess.run([PY, "-m", "gateway.cli", "send", str(src), "--packets", "3", "--sender", rig.ep["sender"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mid = int(r.stdout.strip())
    outs = wait_for(lambda: len(rig.outputs()) == 2 and rig.outputs(), 60, what="2 outputs")
    assert outs[mid]["source_name"] == imgs[1][0]
    assert {o["source_name"] for o in outs.values()} == {imgs[0][0], imgs[1][0]}
    assert not any(inbox.iterdir())  # accepted files leave the inbox
    st = subprocess.run([PY, "-m", "gateway.cli", "status", "--sender", rig.ep["sender"], "--receiver",
                         rig.ep["receiver"], "--link", rig.ep["link_control"]],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    assert "delivered" in st.stdout and "forward" in st.stdout
    assert rig.terminate("sender") == 0
    assert rig.terminate("receiver") == 0


def test_bad_jobs_are_refused_with_a_sentence_and_the_daemon_survives(rig_factory, tmp_path):
    # A sender that takes images of at most 100x100 pixels. Before issue 16 a text file, a truncated image and
    # an image over the pixel limit were accepted with an id and failed later ("<_io.BytesIO object at 0x...>").
    cfg = yaml.safe_load((ROOT / "configs/daemons/sender.yaml").read_text())
    cfg["limits"]["max_pixels"] = 100 * 100
    small = tmp_path / "sender-small.yaml"
    small.write_text(yaml.safe_dump(cfg))
    rig = rig_factory(preset="clean", time_scale=1.0, sender_args=["--config", str(small)]).start()
    good = make_images(1)[0][1]
    cases = {
        "x.png": (b"not an image", "not an image"),
        "cut.png": (good[: len(good) // 2], "truncated or damaged"),
        "big.png": (make_images(1, size=200)[0][1], "image is 200x200 = 40000 pixels, above the limit of 10000"),
    }
    for name, (data, words) in cases.items():
        reply = rig.ask("sender", {"cmd": "send", "name": name, "image": data, "priority": 5})
        assert not reply["ok"] and words in reply["error"] and "BytesIO" not in reply["error"], reply
    refused = rig.ask("sender", {"cmd": "send", "name": "y.png", "image": good, "codec": "nope"})
    assert not refused["ok"] and "unknown codec 'nope'" in refused["error"]
    garbage = rig.ask("sender", {"cmd": 7})
    assert not garbage["ok"] and "send, status" in garbage["error"]
    st = rig.sender_status()
    assert st["counts"]["accepted"] == 0 and st["counters"]["refused"] == 4
    # A one-frame budget is not a bad job: the rate controller downscales until the image fits.
    tiny = rig.submit("tiny.png", make_images(1)[0][1], packets=1, codec="webp")
    ok_id = rig.submit("ok.png", make_images(2)[1][1], packets=3)
    outs = wait_for(lambda: {tiny, ok_id} <= set(rig.outputs()) and rig.outputs(), 30,
                    what="good images after bad ones")
    assert outs[tiny]["frames_total"] == 1 and outs[tiny]["setting"]["scale_code"] > 0
    # the ground writes its outputs before the sender hears the final ACK
    wait_for(lambda: rig.sender_status()["counts"]["delivered"] == 2, 30, what="the sender to record both deliveries")
