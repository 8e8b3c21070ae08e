"""Hostile peers: forged frames (wrong HMAC) are rejected and counted; without the frame key a peer cannot take
a side of the link; without the CURVE key a peer cannot inject."""

from __future__ import annotations

import json
import os
import subprocess
import time

import zmq

from gateway.transport.curve import CurveKeys, generate_keypair, load_key
from gateway.transport.lazy_pirate import LazyPirate
from gateway.transport.link_peer import LinkPeer
from packetizer.frame import Frame, FrameCodec, FrameType
from test_daemons import PY, check_outputs, make_images, rig_factory, wait_for  # noqa: F401  (fixture)


def test_forged_hmac_frames_rejected_and_counted(rig_factory, tmp_path):
    # An open link (no hello check), so the forged frames reach the ground, whose HMAC check must drop them.
    rig = rig_factory(preset="clean", time_scale=1.0, link_auth=False).start()
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


def test_a_peer_without_the_frame_key_cannot_take_a_side_of_the_link(rig_factory, tmp_path):
    # Before issue 16: a DEALER saying [b"H"] every 10 ms became the ground side, captured 156 frames in 25 s
    # and stopped all delivery, HMAC or not.
    rig = rig_factory(preset="clean", time_scale=1.0).start()
    ctx = zmq.Context()
    thieves = [LinkPeer(ctx, rig.ep["ground_side"]), LinkPeer(ctx, rig.ep["sender_side"])]
    wrong_key = LinkPeer(ctx, rig.ep["ground_side"], hello_key=b"not-the-frame-key-0123456789", side="ground")
    injected = FrameCodec(450).pack(Frame(FrameType.DATA, 999, 0, 1, 1, b"injected"))
    sent = {}
    captured = 0
    for i, (name, data) in enumerate(make_images(4)):
        sent[rig.submit(name, data, packets=3)] = name
        for _ in range(25):  # a hello every 10 ms from each thief, and frames
            for t in (*thieves, wrong_key):
                t.send_hello()
            thieves[1].send_frame(injected)
            time.sleep(0.01)
            captured += sum(t.recv_frame() is not None for t in (*thieves, wrong_key))
    wait_for(lambda: len(rig.outputs()) == len(sent), 60, what="every image despite the thieves")
    check_outputs(rig, sent)
    captured += sum(t.recv_frame(200) is not None for t in (*thieves, wrong_key))
    assert captured == 0
    stats = rig.link_stats()
    assert stats["refused"]["ground"] >= 100 and stats["refused"]["sender"] >= 100
    assert 999 not in {m["id"] for m in rig.receiver_status()["messages"]}
    for t in (*thieves, wrong_key):
        t.close()
    ctx.destroy(linger=0)


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
    # satgw status reaches a CURVE link with the operator key from 'satgw keys' (before: no CURVE option at all)
    st = subprocess.run([PY, "-m", "gateway.cli", "status", "--json", "--curve-dir", str(keys), "--sender",
                         rig.ep["sender"], "--receiver", rig.ep["receiver"], "--link", rig.ep["link_control"]],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and json.loads(st.stdout)["link"]["ok"], st.stdout + st.stderr
    link.close()
    intruder.close()
    plain.close()
    ctx.destroy(linger=0)
