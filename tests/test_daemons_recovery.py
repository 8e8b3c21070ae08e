"""kill -9 of each daemon mid-transfer, and link outages: nothing lost, nothing twice, nothing sent while down."""

from __future__ import annotations

import json

from test_daemons import check_outputs, make_images, rig_factory, wait_for  # noqa: F401  (fixture)


def test_kill9_each_daemon_mid_transfer_then_restart(rig_factory):
    rig = rig_factory(preset="geo", time_scale=40.0).start()
    sent = {}
    for name, data in make_images(12):
        sent[rig.submit(name, data, packets=3, codec="webp")] = name
    for victim in ("sender", "receiver", "link"):
        # let some frames flow (but not everything) before the crash
        before = rig.sender_status()["counters"]["frames_sent"] if victim != "sender" else 0
        wait_for(lambda: rig.sender_status()["counters"]["frames_sent"] >= before + 3, 30, what="frames to flow")
        outputs_before = len(rig.outputs())
        rig.kill(victim)
        rig.restart(victim)
        assert len(rig.outputs()) < len(sent) or outputs_before == len(sent)  # the crash came mid-transfer
    wait_for(lambda: len(rig.outputs()) == len(sent), 120, what="all outputs after restarts")
    # Settled: the sender recorded every delivery, the ground decodes nothing more and the link carries nothing:
    # a late duplicate or a re-decode would have had its chance to show up.
    wait_for(lambda: rig.sender_status()["counts"]["delivered"] == len(sent), 60, what="every delivery recorded")
    wait_for(lambda: (r := rig.receiver_status())["counts"]["done"] == len(sent) and r["decoding"] == 0, 30,
             what="the ground to finish decoding")
    wait_for(lambda: (f := rig.link_stats()["forward"])["in_flight"] == 0 and f["queue_depth"] == 0, 30,
             what="the forward link to drain")
    check_outputs(rig, sent)


def test_no_frame_leaves_while_link_is_down(rig_factory, tmp_path):
    # Passes: up 20 link s, down 20 link s, repeating; at time scale 20 each phase lasts 1 s of wall time.
    preset = tmp_path / "outage.yaml"
    preset.write_text(
        "name: outage\nframe_size: 450\ntime_scale: 1.0\nseed: 5\n"
        "availability: {periodic: {period_s: 40, duration_s: 20, offset_s: 0}}\n"
        "forward: {rate_bps: 2400, queue: {frames: 32}, delay: {propagation_s: 0.1}, loss: {p: 0.05}}\n"
        "return: {rate_bps: 2400, queue: {frames: 32}, delay: {propagation_s: 0.1}}\n"
    )
    rig = rig_factory(preset=preset, time_scale=20.0).start()
    sent = {}
    for name, data in make_images(10):
        sent[rig.submit(name, data, packets=3, codec="webp")] = name
    # ~40 frames x 1.5 s of air time do not fit one 20 s pass: the transfer spans several outages.
    wait_for(lambda: len(rig.outputs()) == len(sent), 90, what="all outputs across the outages")
    check_outputs(rig, sent)
    stats = rig.link_stats()
    assert stats["forward"]["dropped"].get("outage", 0) == 0, stats["forward"]
    rig.terminate("link")  # flushes the trace
    times = [rec["t_in"] for rec in map(json.loads, rig.trace.read_text().splitlines()) if rec["dir"] == "forward"]
    assert times, "no forward frames in the trace"
    in_outage = [t for t in times if t % 40 >= 20]
    assert not in_outage, in_outage[:5]
    assert len({int(t // 40) for t in times}) >= 2  # the transfer resumed after an outage
