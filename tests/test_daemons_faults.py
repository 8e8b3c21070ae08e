"""End-to-end, three daemons as processes: delivery means on disk, retries never duplicate, a lost spool is noticed.

Each test would fail before the fix it covers (issue 16): the sender said
"delivered" while the ground had dropped the picture; ``satgw send`` retries
made second jobs; a file over the size limit got "no reply"; a deleted spool
went unnoticed and its jobs were lost.
"""

from __future__ import annotations

import sqlite3
import subprocess

import msgpack
import pytest
import yaml
import zmq

from test_daemons import PY, ROOT, check_outputs, make_images, rig_factory, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(240)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_the_sender_says_delivered_only_once_the_picture_is_on_the_grounds_disk(rig_factory):
    rig = rig_factory(preset="clean", time_scale=1.0)
    rig.outbox.parent.mkdir(parents=True, exist_ok=True)
    rig.outbox.write_text("a file where the outbox folder should be: the ground cannot write pictures")
    rig.start()
    name, data = make_images(1)[0]
    mid = rig.submit(name, data, packets=3)
    held = wait_for(lambda: (s := rig.sender_status())["counts"]["held"] == 1 and s, 60, what="the job to be held")
    assert held["counts"]["delivered"] == 0
    ground = wait_for(lambda: (r := rig.receiver_status())["retrying"] and r, 30, what="the ground to retry")
    assert ground["retrying"][0]["id"] == mid and "cannot write the picture" in ground["retrying"][0]["reason"]
    assert ground["counts"]["failed"] == 0 and "decode" in ground["faults"]
    rig.outbox.unlink()  # the operator fixes the disk
    wait_for(lambda: rig.sender_status()["counts"]["delivered"] == 1, 120, what="the delivery after the fix")
    check_outputs(rig, {mid: name})


def test_a_retried_send_returns_the_same_id_and_makes_no_second_job(rig_factory, tmp_path):
    rig = rig_factory(preset="clean", time_scale=1.0).start()
    name, data = make_images(1)[0]
    # A reply that is lost: the client goes away after sending; the daemon takes the job anyway.
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.connect(rig.ep["sender"])
    req.send(msgpack.packb({"cmd": "send", "name": name, "image": data, "request_id": "r-42"}, use_bin_type=True))
    wait_for(lambda: rig.sender_status()["counters"]["accepted"] == 1, 30, what="the first try to be taken")
    req.close(linger=0)
    ctx.destroy(linger=0)
    again = rig.ask("sender", {"cmd": "send", "name": name, "image": data, "request_id": "r-42"})
    assert again["ok"] and rig.sender_status()["counters"]["accepted"] == 1  # the retry found the first job
    src = tmp_path / "photo.png"
    src.write_bytes(make_images(2)[1][1])
    runs = [cli("send", str(src), "--sender", rig.ep["sender"], "--request-id", "cli-7") for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0] and runs[0].stdout == runs[1].stdout
    # The repro: replies lost to a tiny timeout. Before: 3, 2 and 2 jobs of one image.
    lost = cli("send", str(src), "--sender", rig.ep["sender"], "--timeout", "0.001", "--retries", "3")
    assert lost.returncode in (0, 3), lost.stderr
    if lost.returncode == 3:  # says how to find out without sending twice (or that nothing went out)
        assert "--request-id" in lost.stderr or "nothing was sent" in lost.stderr, lost.stderr
    db = sqlite3.connect(str(rig.tmp / "spool.db"))
    per_name = dict(db.execute("SELECT source_name, COUNT(*) FROM messages GROUP BY source_name").fetchall())
    db.close()
    assert per_name[name] == 1 and per_name["photo.png"] <= 2  # cli-7 once, the lost-reply run at most once
    assert rig.sender_status()["counters"]["repeated_requests"] >= 2


def test_send_refuses_with_the_reason_and_a_nonzero_exit(rig_factory, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/daemons/sender.yaml").read_text())
    cfg["limits"]["max_image_bytes"] = 2000
    small = tmp_path / "sender-small.yaml"
    small.write_text(yaml.safe_dump(cfg))
    rig = rig_factory(preset="clean", time_scale=1.0, sender_args=["--config", str(small)]).start()
    big = tmp_path / "big.png"
    big.write_bytes(make_images(1, size=200)[0][1])
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    r = cli("send", str(big), "--sender", rig.ep["sender"])
    assert r.returncode == 1 and "above the sender's limits.max_image_bytes = 2000" in r.stderr, r.stderr
    r = cli("send", str(text), "--sender", rig.ep["sender"])
    assert r.returncode == 1 and "refused: the file is not an image" in r.stderr, r.stderr
    assert rig.sender_status()["counts"]["accepted"] == 0


def test_a_spool_deleted_under_the_sender_stops_acceptance_and_its_jobs_are_saved(rig_factory):
    # Before: the sender went on accepting into the unlinked file and restarted empty, without a warning.
    rig = rig_factory(preset="clean", time_scale=1.0).start(names=("receiver", "sender"), ready=("receiver", "sender"))
    name, data = make_images(1)[0]
    mid = rig.submit(name, data, packets=3)  # no link yet: it waits in the spool
    for suffix in ("", "-wal", "-shm"):
        (rig.tmp / f"spool.db{suffix}").unlink(missing_ok=True)
    refused = wait_for(lambda: not (r := rig.ask("sender", {"cmd": "send", "name": "b.png", "image": data}))["ok"]
                       and r, 10, what="acceptance to stop")
    assert "was deleted while the sender was running" in refused["error"]
    st = rig.sender_status()
    assert st["accepting"] is False and "spool_file" in st["faults"]
    rescued = sorted(rig.tmp.glob("spool.db.rescued-*"))
    assert len(rescued) == 1
    db = sqlite3.connect(str(rescued[0]))
    assert db.execute("SELECT source_name FROM messages WHERE id=?", (mid,)).fetchone() == (name,)
    db.close()
    rig.kill("sender")
    rig.restart("sender")
    log = (rig.tmp / "sender.log").read_text()
    assert '"event":"spool_created"' in log and '"event":"spool_rescue_found"' in log
