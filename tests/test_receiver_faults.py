"""The ground station when its host fails or its peers are hostile: nothing lost, nothing grows without bound.

Same setting as ``test_receiver.py`` (the daemon's real loop in a thread, the
test playing the link). Each test here would fail before the fix it covers
(issue 16): delivery promised before the picture was on disk, META waits
that never ended, pictures of any size decoded, a broken bundle accepted.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

import pytest

from gateway.codec import bitstream
from gateway.errors import BundleError
from gateway.eval.launcher import request, wait_for
from gateway.paths import bundle_dir
from packetizer.ack import AckStatus
from packetizer.frame import Frame, FrameType
from packetizer.segment import split_message
from test_receiver import CODEC, ground, meta, outputs, webp_message  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(180)


def status(tmp_path: Path) -> dict:
    return request(f"ipc://{tmp_path}/control", {"cmd": "status"}, timeout=5)


def test_an_unwritable_outbox_holds_the_message_and_retries_until_it_is_written(ground, tmp_path: Path) -> None:
    # Before: the decode failed with an OSError, the message was marked failed, its bitstream dropped,
    # and the sender had been told "complete" at assembly: the picture was lost for good.
    outbox = tmp_path / "outbox"
    outbox.write_text("a file where the outbox folder should be: every write fails")
    daemon, link, lines = ground(**{"decode.retry_initial_s": 0.05, "decode.retry_max_s": 0.2})
    frames, _, _ = webp_message(21)
    link.send([meta(21, frames[0].k, frames[0].n), *frames])
    assert link.wait_ack(21, AckStatus.HELD).status == AckStatus.HELD  # all frames are safe; not delivered yet
    st = wait_for(lambda: (s := status(tmp_path))["counters"].get("decode_retries", 0) >= 3 and s, 30,
                  "decode retries")
    assert st["counts"]["assembled"] == 1 and st["counts"]["failed"] == 0
    assert st["retrying"][0]["id"] == 21 and "cannot write the picture" in st["retrying"][0]["reason"]
    assert "decode" in st["faults"]
    assert lines.events("resource_fault") and lines.events("decode_retry")
    assert not (21 in link.acks and link.acks[21].status in (AckStatus.DONE, AckStatus.FAILED))
    outbox.unlink()  # the operator makes room
    assert link.wait_ack(21, AckStatus.DONE, timeout=30).complete
    assert outputs(tmp_path) == ["21.json", "21.png"]
    wait_for(lambda: status(tmp_path)["faults"] == {}, 10, "the fault to clear")
    assert lines.events("resource_recovered")


def test_forged_one_frame_messages_without_meta_cost_bounded_memory_and_no_idle_cpu(ground, tmp_path: Path) -> None:
    # Before: evicted messages stayed in waiting_meta forever and every loop turn ran SQL for each,
    # leaving an idle receiver at 16-73 % of a core.
    daemon, link, _ = ground(**{"limits.max_pending_messages": 40, "ack.meta_grace_s": 3000})
    flood = [Frame(FrameType.DATA, 100_000 + i, 0, 1, 1, b"forged %d" % i) for i in range(3000)]
    # In bursts below ZeroMQ's high-water mark (1 000 a pipe): a ROUTER drops what a peer busy elsewhere (still
    # loading its models, say) has not yet read, which made the whole flood one burst a flaky count.
    for start in range(0, len(flood), 500):
        link.send(flood[start : start + 500])
        wait_for(lambda n=start + 500: daemon.counters["frames_in"] >= n, 60, "the flood to be read")
    st = status(tmp_path)
    assert st["waiting_meta"] <= 40 and st["counts"]["receiving"] <= 40
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(2.0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    busy = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert busy < 0.6, f"an idle receiver used {busy:.2f} s of CPU in 2 s"


def test_meta_waits_expire_and_the_message_is_assembled_without_it(ground, tmp_path: Path) -> None:
    daemon, link, _ = ground(**{"ack.meta_grace_s": 0.2})
    frames, _, _ = webp_message(22)
    link.send(frames)
    assert link.wait_ack(22).complete
    assert status(tmp_path)["waiting_meta"] == 0


def test_a_bitstream_claiming_a_huge_picture_fails_before_anything_is_decoded(ground, tmp_path: Path) -> None:
    daemon, link, lines = ground(**{"limits.max_image_pixels": 1_000_000})
    header = bitstream.Header(bitstream.CODEC_IDS["webp"], 0, 8000, 8000, 0, 50, 0, 0)
    frames = split_message(23, bitstream.pack(header, b"\0" * 100), CODEC)
    link.send([meta(23, 1, 1), *frames])
    nack = link.wait_ack(23, AckStatus.FAILED)
    assert "8000x8000" in nack.reason and "1000000 pixels" in nack.reason
    assert outputs(tmp_path) == []


def _damaged_bundle(tmp_path: Path) -> Path:
    bad = tmp_path / "damaged-bundle"
    shutil.copytree(bundle_dir("cadc-tiny"), bad)
    weights = bad / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    for off in range(100_000, len(data) - 4096, 50_000):  # damage the weights, not the header: it still loads
        data[off : off + 2048] = bytes((i * 131 + off) % 251 for i in range(2048))
    weights.write_bytes(bytes(data))
    return bad


def test_the_receiver_refuses_to_start_with_a_damaged_bundle(ground, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="refusing to start.*damaged"):
        ground(bundle=str(_damaged_bundle(tmp_path)))
    with pytest.raises(BundleError, match="refusing to start"):
        ground(bundle=str(tmp_path / "no-such-bundle"))


def test_a_meta_frame_after_the_grace_period_still_names_the_picture(ground, tmp_path: Path) -> None:
    # Before: the record kept source_name null though the sender sent the META frame again.
    import json

    daemon, link, _ = ground(**{"ack.meta_grace_s": 0.1})
    frames, _, _ = webp_message(24)
    link.send(frames)
    assert link.wait_ack(24).complete
    record = tmp_path / "outbox" / "24.json"
    assert json.loads(record.read_text())["source_name"] is None
    link.send([meta(24, frames[0].k, frames[0].n, name="late.png")])  # the sender's probe carries it
    wait_for(lambda: json.loads(record.read_text())["source_name"] == "late.png", 20, "the record to get its name")
    assert json.loads(record.read_text())["source_bytes"] == 1234


def test_the_receiver_checks_every_embedded_model_at_start(ground, tmp_path: Path) -> None:
    """``bundle: null`` decodes with every embedded model (the sender's ladder uses them all): each is checked."""
    from gateway.codec.cadc.bundle import bundle_model_id
    from gateway.paths import embedded_bundles

    ground()
    checked = status(tmp_path)["bundle"]
    ids = [f"{bundle_model_id(b or bundle_dir('cadc-tiny')):04x}" for b in embedded_bundles()]
    assert len(ids) >= 2
    assert [checked["cadc"]["model_id"], *(also["model_id"] for also in checked["also"])] == ids
