"""Forged frames (wrong HMAC) are rejected and counted; without the CURVE key a peer cannot inject."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import zmq

from gateway.transport.curve import CurveKeys, generate_keypair, load_key
from gateway.transport.lazy_pirate import LazyPirate
from gateway.transport.link_peer import LinkPeer
from packetizer.frame import Frame, FrameCodec, FrameType
from test_daemons import PY, check_outputs, make_images, rig_factory, wait_for  # noqa: F401  (fixture)


def test_forged_hmac_frames_rejected_and_counted(rig_factory, tmp_path):
    key = tmp_path / "hmac.key"
    key.write_bytes(secrets.token_hex(32).encode())
    rig = rig_factory(preset="clean", time_scale=1.0, sender_args=["--auth-key", str(key)],
                      receiver_args=["--auth-key", str(key)]).start()
    # A forger on the sender side of the link: well-formed frames, right CRC, wrong key.
    forger_codec = FrameCodec(450, auth_key=b"not-the-key-at-all-0123456789", tag_len=8)
    ctx = zmq.Context()
    forger = LinkPeer(ctx, rig.ep["sender_side"])
    forged = [forger_codec.pack(Frame(FrameType.DATA, 4242, i % 3, 3, 3, os.urandom(100))) for i in range(300)]
    sent = {}
    imgs = make_images(3)
    for name, data in imgs:
        sent[rig.submit(name, data, packets=3)] = name
    for f in forged:
        forger.send_frame(f)
        time.sleep(0.001)
    forger.close()
    ctx.destroy(linger=0)
    wait_for(lambda: len(rig.outputs()) == 3, 60, what="valid traffic during a forged flood")
    # the real sender's heartbeat takes the link's sender side back; finish the transfer
    check_outputs(rig, sent)
    st = rig.receiver_status()
    assert st["counters"].get("bad_AuthError", 0) > 0
    assert 4242 not in {m["id"] for m in st["messages"]}


def test_curve_peer_without_key_cannot_inject(rig_factory, tmp_path):
    keys = tmp_path / "keys"
    r = subprocess.run([PY, "-m", "gateway.cli", "keys", str(keys)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    preset = tmp_path / "clean-curve.yaml"
    preset.write_text(
        "name: clean-curve\nframe_size: 450\nseed: 0\n"
        "forward: {rate_bps: 1000000, queue: {frames: 10000}}\nreturn: {rate_bps: 1000000, queue: {frames: 10000}}\n"
        + (keys / "link-curve.yaml").read_text()
    )
    rig = rig_factory(preset=preset, time_scale=1.0, sender_args=["--curve-dir", str(keys)],
                      receiver_args=["--curve-dir", str(keys)])
    rig.start(ready=("receiver", "sender"))  # the link's control socket wants CURVE: no plain ping
    # an intruder with its own key pair (not in allowed_clients) but the link's public key
    intr_pub, intr_sec = generate_keypair(tmp_path / "intruder", "x")
    ctx = zmq.Context()
    intruder = LinkPeer(ctx, rig.ep["sender_side"], CurveKeys(load_key(intr_pub), load_key(intr_sec),
                                                              server_public=load_key(keys / "link.key")))
    plain = LinkPeer(ctx, rig.ep["sender_side"])  # and one without CURVE at all
    codec = FrameCodec(450)
    junk = codec.pack(Frame(FrameType.DATA, 777, 0, 1, 1, b"intruder"))
    for _ in range(50):
        intruder.send_frame(junk)
        plain.send_frame(junk)
    sent = {}
    for name, data in make_images(2):
        sent[rig.submit(name, data, packets=3)] = name
    wait_for(lambda: len(rig.outputs()) == 2, 60, what="outputs over CURVE")
    check_outputs(rig, sent)
    st = rig.receiver_status()
    assert 777 not in {m["id"] for m in st["messages"]}
    # the link never took the intruders' frames: what came in on its sender side is what the sender sent
    sender_keys = CurveKeys(load_key(keys / "sender.key"), load_key(keys / "sender.key_secret"),
                            server_public=load_key(keys / "link.key"))
    link = LazyPirate(ctx, rig.ep["link_control"], timeout_s=2.0, curve=sender_keys)

    def link_saw_only_the_sender():
        return link.request({"cmd": "stats"})["forward"]["in"] == rig.sender_status()["counters"]["frames_sent"]

    wait_for(link_saw_only_the_sender, 10, what="the link's forward count to match the sender's")
    link.close()
    intruder.close()
    plain.close()
    ctx.destroy(linger=0)
