"""``satgw web`` over HTTP, without a browser: what it serves, what it refuses, and that it only ever reads.

The server runs as a real ``satgw web`` process on loopback over an outbox
and a frame store made by the ground station's own classes (no daemons);
requests go through ``http.client``, which sends paths as given (no ``..``
clean-up), so traversal attempts reach the server as an attacker would send
them.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from gateway.codec.image_io import png_bytes
from gateway.eval.launcher import free_ports, wait_for
from gateway.ground.output import OutputRecord, Timings
from gateway.protocol.meta import MessageMeta
from gateway.store.framestore import FrameStore
from gateway.store.framestore_reader import FrameStoreReader
from gateway.web.live import Endpoints, LinkPanel, Sources
from gateway.web.outbox import OutboxView
from gateway.web.state import PageState, setting_text
from packetizer.frame import Frame, FrameCodec, FrameType
from packetizer.segment import split_message

pytestmark = pytest.mark.timeout(120)
TOKEN = "web-page-token-0123456789abcdef"
PICTURE = 1234567
SECRET = b"outside the outbox: must never be served"


def _record(mid: int, name: str, decoded_at: float) -> OutputRecord:
    return OutputRecord(
        message_id=mid, source_name=name, source_bytes=5000, codec="webp",
        setting={"quality": 41, "scale_code": 4, "scale": 2 ** -0.5}, width=64, height=48, coded_size=[45, 34],
        bitstream_bytes=800, frames_total=2, frames_data=2, frames_received=2, frames_lost=0, frames_repeated=1,
        frame_size=450, bytes_on_air=900, bytes_received_on_air=1350, bpp=2.08333, bpp_on_air=2.34375, caption=None,
        timings=Timings(first_frame_at=decoded_at - 3, assembled_at=decoded_at - 1, decoded_at=decoded_at,
                        transfer_s=2.0, decode_s=0.012, decode_stages_ms=None, accepted_at=decoded_at - 9.5,
                        latency_s=9.5),
        png=f"{mid}.png")


@pytest.fixture
def ground(tmp_path: Path) -> dict[str, Path]:
    """An outbox with two pictures (and traps beside it) and a frame store with one arriving, one failed message."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    rng = np.random.default_rng(0)
    for mid, name, t in ((PICTURE, "older.png", 1000.0), (PICTURE + 1, "newer.png", 2000.0)):
        (outbox / f"{mid}.png").write_bytes(png_bytes(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)))
        (outbox / f"{mid}.json").write_bytes(_record(mid, name, t).to_json())
    (tmp_path / "secret.png").write_bytes(SECRET)
    (outbox / "77.png").symlink_to(tmp_path / "secret.png")  # a link out of the outbox
    (outbox / "77.json").symlink_to(tmp_path / "secret.png")
    store = FrameStore(tmp_path / "frames.db")
    codec = FrameCodec(450)
    arriving = split_message(11, bytes(2000), codec)
    meta = MessageMeta("arriving.png", 2000, "webp", 1.0).pack(codec.payload_capacity)
    store.store_batch([*arriving[:2], Frame(FrameType.META, 11, 0, arriving[0].k, arriving[0].n, meta)])
    store.store_batch(split_message(12, bytes(100), codec))
    store.mark_failed(12, "decode failed: BitstreamError: truncated")
    store.close()
    return {"outbox": outbox, "store": tmp_path / "frames.db", "tmp": tmp_path}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


class Web:
    """A ``satgw web`` process on a free loopback port."""

    def __init__(self, ground: dict[str, Path], *args: str) -> None:
        self.port = free_ports(1)[0]
        self.log = ground["tmp"] / "web.log"
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "web", "--outbox", str(ground["outbox"]),
             "--store", str(ground["store"]), "--receiver", "none", "--link-control", "none",
             "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.DEVNULL, stderr=self._log_file)
        wait_for(lambda: self.proc.poll() is not None or self._up(), 60, what="satgw web to answer")
        assert self.proc.poll() is None, self.log.read_text()

    def _up(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read(), r.headers
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self._log_file.close()


@pytest.fixture
def web(ground: dict[str, Path]) -> Iterator[Web]:
    w = Web(ground)
    yield w
    w.stop()


def test_the_page_and_its_document(web: Web, ground: dict[str, Path]) -> None:
    status, body, headers = web.get("/")
    assert status == 200 and b'<script src="/static/app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert web.get("/static/app.js")[0] == 200 and web.get("/static/style.css")[0] == 200
    doc = json.loads(web.get("/api/state")[1])
    assert [i["message_id"] for i in doc["images"]] == [PICTURE + 1, PICTURE]  # newest first
    newer = doc["images"][0]
    assert newer == {**json.loads((ground["outbox"] / f"{PICTURE + 1}.json").read_text()), "retransmissions": None,
                     "setting_text": "quality 41 · scale 0.71", "full_url": f"/images/{PICTURE + 1}.png?r=1",
                     "thumb_url": f"/images/{PICTURE + 1}/thumb.png?r=1", "revisions": []}
    (arriving,) = doc["arriving"]
    assert (arriving["id"], arriving["name"], arriving["received"], arriving["k"]) == (11, "arriving.png", 2, 5)
    (failed,) = doc["failed"]
    assert failed["id"] == 12 and "truncated" in failed["reason"]
    assert doc["ground"]["counts"] == {"receiving": 1, "assembled": 0, "done": 0, "failed": 1}
    assert doc["sender"] == {"reachable": False, "asked": False, "error": None}
    # The pictures: the PNG as written, and a thumbnail of it.
    status, png, headers = web.get(f"/images/{PICTURE}.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert png == (ground["outbox"] / f"{PICTURE}.png").read_bytes()
    status, thumb, _ = web.get(f"/images/{PICTURE}/thumb.png")
    assert status == 200 and Image.open(io.BytesIO(thumb)).size == (64, 48)


def test_live_updates_arrive_as_server_sent_events(web: Web, ground: dict[str, Path]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        conn.request("GET", "/api/events")
        r = conn.getresponse()
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")

        def event() -> dict[str, Any]:
            lines = []
            while (line := r.readline()) != b"\n":
                lines.append(line)
            data = b"".join(line[6:] for line in lines if line.startswith(b"data: "))
            assert lines[0] == b"event: state\n"
            return json.loads(data)

        first = event()
        assert len(first["images"]) == 2
        # A picture lands: the next event has it, without the client asking.
        mid = PICTURE + 5
        (ground["outbox"] / f"{mid}.png").write_bytes((ground["outbox"] / f"{PICTURE}.png").read_bytes())
        (ground["outbox"] / f"{mid}.json").write_bytes(_record(mid, "latest.png", 3000.0).to_json())
        second = event()
        assert second["version"] > first["version"] and second["images"][0]["source_name"] == "latest.png"
    finally:
        conn.close()


BAD_PATHS = (
    "/nope", "/images/../../etc/passwd", "/images/..%2f..%2fetc%2fpasswd", "/images/%2e%2e/secret.png",
    "/images/../secret.png", "/static/../../secret.png", "/static/%2e%2e/%2e%2e/secret.png", "/images/77.png",
    "/images/77/thumb.png", "/images/-1.png", "/images/99999999999999999999.png", "/images/1234567.json",
    f"/images/{PICTURE}.png/../../secret.png", "/api/state/../../secret.png", "//etc/passwd",
)


def test_bad_paths_get_4xx_and_nothing_outside_the_outbox(web: Web, ground: dict[str, Path]) -> None:
    before = _digest(ground["outbox"])
    for path in BAD_PATHS:
        status, body, _ = web.get(path)
        assert 400 <= status < 500, (path, status)
        assert SECRET not in body and b"root:" not in body, path
    assert _digest(ground["outbox"]) == before


def test_huge_requests_and_other_methods_get_4xx(web: Web) -> None:
    assert web.get("/?q=" + "A" * 3000)[0] == 414
    assert web.get("/api/state?" + "x=1&" * 1000)[0] == 414
    assert web.get("/?q=" + "A" * 100_000)[0] == 414
    assert web.get("/api/state", method="POST")[0] == 405
    assert web.get(f"/images/{PICTURE}.png", method="DELETE")[0] == 405
    assert web.get("/healthz")[0] == 200  # and it still serves


def test_the_page_reads_the_ground_and_never_writes(ground: dict[str, Path], tmp_path: Path) -> None:
    store_before = hashlib.sha256(ground["store"].read_bytes()).hexdigest()
    outbox_before = _digest(ground["outbox"])
    state = PageState(OutboxView(ground["outbox"]), FrameStoreReader(ground["store"]), Sources(Endpoints()))
    state.refresh()
    state.close()
    assert json.loads(state.snapshot()[1])["ground"]["counts"]["receiving"] == 1
    assert hashlib.sha256(ground["store"].read_bytes()).hexdigest() == store_before
    assert _digest(ground["outbox"]) == outbox_before
    # A frame store or outbox that is not there yet reads as empty, and is not created.
    missing = PageState(OutboxView(tmp_path / "no-outbox"), FrameStoreReader(tmp_path / "no.db"), Sources(Endpoints()))
    missing.refresh()
    missing.close()
    doc = json.loads(missing.snapshot()[1])
    assert doc["images"] == [] and doc["ground"]["counts"] == dict.fromkeys(("receiving", "assembled", "done",
                                                                            "failed"), 0)
    assert not (tmp_path / "no.db").exists() and not (tmp_path / "no-outbox").exists()


class FakeSources:
    """Daemon replies as given, instead of asking over ZMQ (the page's :class:`Sources` interface)."""

    def __init__(self, receiver: dict[str, Any], sender: dict[str, Any]) -> None:
        self.endpoints = Endpoints(receiver="ipc://ground", sender="ipc://sender")
        self.errors: dict[str, str] = {}
        self.replies = {"receiver": receiver, "sender": sender, "link_stats": None, "link_schedule": None}

    def poll(self) -> dict[str, Any]:
        return self.replies

    def close(self) -> None:
        pass


def test_the_page_shows_held_jobs_faults_and_decode_retries(ground: dict[str, Path]) -> None:
    full = {"error": "database or disk is full", "since": 1.0, "failures": 3}
    receiver = {"ok": True, "counters": {"frames_in": 9}, "decoding": 0, "faults": {"decode": full},
                "retrying": [{"id": 11, "reason": "the outbox is full", "failures": 2, "retry_in_s": 4.0}]}
    jobs = [{"id": i, "state": st, "priority": 0, "codec": "webp", "source_name": f"{st}.png", "n": 3, "acked": 3,
             "sent": 3, "retransmitted": 0} for i, st in enumerate(("accepted", "held", "in_flight", "encoded",
                                                                    "delivered"))]
    sender = {"ok": True, "counts": {"held": 1}, "messages": jobs, "faults": {"spool": full}}
    state = PageState(OutboxView(ground["outbox"]), FrameStoreReader(ground["store"]), FakeSources(receiver, sender))
    state.refresh()
    doc = json.loads(state.snapshot()[1])
    # On the air first, then held (complete on the ground, its picture not yet written), then what waits.
    assert [m["state"] for m in doc["sender"]["queue"]] == ["in_flight", "held", "encoded", "accepted"]
    assert doc["sender"]["faults"] == {"spool": full} and doc["ground"]["faults"] == {"decode": full}
    assert doc["ground"]["retrying"][0]["reason"] == "the outbox is full"


def test_beyond_loopback_the_page_needs_a_token(ground: dict[str, Path]) -> None:
    port = free_ports(1)[0]
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "web", "--outbox", str(ground["outbox"]),
                        "--listen", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "0.0.0.0 can be reached from other hosts; give a token file" in r.stderr
    token_file = ground["tmp"] / "token"
    token_file.write_text(TOKEN)
    web = Web(ground, "--token-file", str(token_file))  # loopback, but with a token: it is required too
    try:
        assert web.get("/api/state")[0] == 401 and web.get(f"/images/{PICTURE}.png")[0] == 401
        assert web.get("/api/state", {"Authorization": "Bearer not-the-token-at-all"})[0] == 401
        assert web.get("/api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, _, headers = web.get(f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "httponly" in headers["Set-Cookie"].lower()
        assert web.get("/api/state", {"Cookie": cookie})[0] == 200
        assert web.get("/healthz")[0] == 200
    finally:
        web.stop()


def test_setting_text() -> None:
    assert setting_text("cadc", {"lam": 0.012345, "delta": 0.5, "scale_code": 0, "lam_code": 3}) == "λ 0.0123 · Δ 0.5"
    assert setting_text("webp", {"quality": 80, "scale_code": 0, "scale": 1.0}) == "quality 80"
    assert setting_text("avif", {"quality": 20, "scale_code": 8, "scale": 0.5}) == "quality 20 · scale 0.50"
    assert setting_text("x", None) == "default"


def test_link_panel_measures_utilization_and_loss_over_its_window() -> None:
    panel = LinkPanel(frame_size=450)
    sched = {"ok": True, "up": True, "next_change_in": 100.0, "time_scale": 10.0, "forward_rate_bps": 2400.0}

    def stats(on_air: int, lost: int) -> dict[str, Any]:
        return {"forward": {"in": on_air + 5, "dropped": {"loss": lost, "burst": 0, "queue": 5, "outage": 0},
                            "corrupted": 0}}

    first = panel.update({"link_schedule": sched, "link_stats": stats(100, 10)}, now=0.0)
    assert first["state"] == "up" and first["next_change_s"] == 10.0 and first["utilization"] is None
    # 20 s later 60 more frames went on the air (10 of them lost): 60 x 3600 bits / 20 s of a 24 kbit/s link.
    later = panel.update({"link_schedule": sched, "link_stats": stats(160, 20)}, now=20.0)
    assert later["utilization"] == pytest.approx(60 * 450 * 8 / 20 / 24000)
    assert later["loss"] == pytest.approx(10 / 60) and later["loss_source"] == "link"
    # Only the ground answers: its view of the link, and CRC failures as the loss it can see.
    ground = {"link": {"known": True, "up": False, "time_scale": 10.0, "forward_rate_bps": 2400.0},
              "counters": {"frames_in": 0, "bad_CRCError": 0}}
    panel = LinkPanel(450)
    panel.update({"receiver": ground}, now=0.0)
    ground["counters"] = {"frames_in": 50, "bad_CRCError": 5}
    view = panel.update({"receiver": ground}, now=10.0)
    assert view["state"] == "outage" and view["source"] == "ground"
    assert view["loss"] == pytest.approx(0.1) and view["loss_source"] == "ground"
    assert view["utilization"] == pytest.approx(50 * 3600 / 10 / 24000)


def test_a_preview_and_its_revisions_are_on_the_page(ground: dict[str, Path]) -> None:
    """Message 11 is still arriving; the ground wrote two previews of it, the second one in the outbox now."""
    import dataclasses

    from gateway.store.revisions import Revision

    store = FrameStore(ground["store"])
    for rev, frames in ((1, 1), (2, 2)):
        store.record_preview(Revision(11, rev, False, frames, 5, frames, 5, 1500.0 + rev))
    store.close()
    preview = dataclasses.replace(_record(11, "arriving.png", 2500.0), complete=False, revision=2, frames_used=2,
                                  frames_data=5, layers_decoded=2, layers_total=5)
    (ground["outbox"] / "11.png").write_bytes((ground["outbox"] / f"{PICTURE}.png").read_bytes())
    (ground["outbox"] / "11.json").write_bytes(preview.to_json())
    receiver = {"ok": True, "counters": {}, "previews": {"enabled": True, "written": 2, "queued": 0}}
    state = PageState(OutboxView(ground["outbox"]), FrameStoreReader(ground["store"]), FakeSources(receiver, {}))
    state.refresh()
    doc = json.loads(state.snapshot()[1])
    card = next(i for i in doc["images"] if i["message_id"] == 11)
    assert (card["complete"], card["revision"], card["frames_used"]) == (False, 2, 2)
    assert card["thumb_url"] == "/images/11/thumb.png?r=2" and card["full_url"] == "/images/11.png?r=2"
    assert [(r["revision"], r["complete"], r["frames_used"]) for r in card["revisions"]] == [(1, False, 1),
                                                                                            (2, False, 2)]
    assert doc["arriving"][0]["id"] == 11  # still arriving: a preview is not a delivery
    assert doc["ground"]["previews"]["written"] == 2
