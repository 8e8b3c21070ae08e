"""Prometheus metrics: where they may be served, who may read them, and that their numbers are the daemons' own.

The end-to-end test runs the three daemons with ``--metrics-listen`` on
loopback, scrapes each ``/metrics`` over HTTP before and after a transfer over
the harsh link, and checks a handful of series against the daemons' status
replies, the outbox, and each other (what the sender sent is what the link
took in; what the link delivered is what the ground received), and the sample
Grafana dashboard against what was served.
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from gateway.daemon.config import load_receiver_config, load_sender_config
from gateway.daemon.faults import FaultBoard
from gateway.daemon.metrics import fault_families
from gateway.daemon.startup import daemon_parser, link_overrides
from gateway.errors import ConfigError
from gateway.eval.launcher import wait_for
from gateway.transport.eventlog import EventLog
from gateway.transport.http_listen import ListenAddress, MetricsSettings, parse_listen
from gateway.transport.metrics_http import MetricsServer
from link_sim.config import parse_link_config
from test_daemons import Rig, make_images

LINK = {"link.endpoint": "ipc:///tmp/x", "link.contact_plan": "plan.yaml"}
TOKEN = "s3cret-token-for-prometheus-0123"


def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """``/metrics`` as {sample name with its labels sorted: value}, e.g. ``x_total{reason="crc"}``."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _status(url: str, token: str | None = None) -> int:
    try:
        return scrape(url, token) and 200
    except urllib.error.HTTPError as e:
        return e.code


# --- where and to whom --------------------------------------------------------------------------


@pytest.mark.parametrize("text, host, port", [("127.0.0.1:9101", "127.0.0.1", 9101), ("[::1]:0", "::1", 0),
                                              ("localhost:80", "localhost", 80)])
def test_listen_addresses_parse(text, host, port) -> None:
    assert parse_listen(text) == ListenAddress(host, port)
    assert parse_listen(text).loopback


@pytest.mark.parametrize("text, message", [("9101", "must be host:port"), (":9101", "needs a host"),
                                           ("::1:9101", "IPv6 address goes in brackets"),
                                           ("127.0.0.1:http", "port must be a number")])
def test_bad_listen_addresses_say_what_is_wrong(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_metrics_are_off_by_default_and_loopback_needs_no_token(tmp_path) -> None:
    assert load_sender_config(None, LINK).metrics == MetricsSettings()
    cfg = load_receiver_config(None, {**LINK, "metrics.listen": "127.0.0.1:9102"})
    assert cfg.metrics == MetricsSettings(ListenAddress("127.0.0.1", 9102), None)


def test_serving_beyond_loopback_needs_a_token_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^metrics.listen: 0.0.0.0 can be reached from other hosts; .*"
                                          r"set metrics.token_file \(in <defaults>\)"):
        load_sender_config(None, {**LINK, "metrics.listen": "0.0.0.0:9101"})
    cfg = load_sender_config(None, {**LINK, "metrics.listen": "0.0.0.0:9101", "metrics.token_file": "tok"})
    assert cfg.metrics.token_file == "tok"
    with pytest.raises(ConfigError, match=r"^metrics.listen: must be host:port"):
        load_receiver_config(None, {**LINK, "metrics.listen": 9101})
    with pytest.raises(ConfigError, match=r"^metrics.port: unknown key"):
        load_receiver_config(None, {**LINK, "metrics.port": 9101})
    with pytest.raises(ConfigError, match=r"^metrics.listen: 192.0.2.1 can be reached"):
        parse_link_config(yaml.safe_load("forward: {rate_bps: 9600}\nreturn: {rate_bps: 9600}\n"
                                         "metrics: {listen: '192.0.2.1:9103'}"))


def test_the_daemons_command_lines_take_metrics_listen() -> None:
    p = daemon_parser("sender", "test", "sender-side")
    assert link_overrides(p.parse_args(["--metrics-listen", "127.0.0.1:9101"]))["metrics.listen"] == "127.0.0.1:9101"


def test_metrics_server_serves_only_metrics_and_checks_the_token(tmp_path) -> None:
    registry = CollectorRegistry()
    Counter("satgw_test_events_total", "events", registry=registry).inc(3)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = MetricsServer(registry, MetricsSettings(ListenAddress("127.0.0.1", 0), str(token_file)))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert scrape(url, TOKEN)["satgw_test_events_total"] == 3
        assert _status(url) == 401 and _status(url, "wrong-token-wrong-token") == 401
        assert _status(f"http://127.0.0.1:{server.port}/other", TOKEN) == 404
        # The port is taken while it runs: a second server says so.
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{server.port} .*pick a free port"):
            MetricsServer(registry, MetricsSettings(ListenAddress("127.0.0.1", server.port)))
    finally:
        server.close()
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="must hold one token of at least 16 characters"):
        MetricsServer(registry, MetricsSettings(ListenAddress("127.0.0.1", 0), str(short)))


def test_resource_faults_are_exported_while_active_and_counted() -> None:
    board = FaultBoard(EventLog("test", stream=io.StringIO()))
    registry = CollectorRegistry()

    class Collector:
        def collect(self):
            yield from fault_families("satgw_test", board, ("spool", "spool_file"))

    registry.register(Collector())

    def read() -> dict[str, float]:
        return {f"{s.name}{{{s.labels['resource']}}}": s.value
                for fam in registry.collect() for s in fam.samples if s.name.endswith(("_fault", "_total"))}

    assert read() == {"satgw_test_resource_fault{spool}": 0, "satgw_test_resource_fault{spool_file}": 0,
                      "satgw_test_resource_faults_total{spool}": 0, "satgw_test_resource_faults_total{spool_file}": 0}
    board.report("spool", "database or disk is full")
    board.report("spool", "database or disk is full")
    assert read()["satgw_test_resource_fault{spool}"] == 1 and read()["satgw_test_resource_faults_total{spool}"] == 1
    board.clear("spool")
    board.report("outbox", "read-only file system")  # a resource not listed still shows
    m = read()
    assert m["satgw_test_resource_fault{spool}"] == 0 and m["satgw_test_resource_faults_total{spool}"] == 1
    assert m["satgw_test_resource_fault{outbox}"] == 1


# --- the numbers --------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_counters_move_during_a_transfer_and_match_the_daemons_counts(tmp_path) -> None:
    rig = Rig(tmp_path / "rig", preset="harsh", time_scale=50.0, metrics=True)
    try:
        rig.start()
        url = rig.metrics_url
        before = {name: scrape(url[name]) for name in ("sender", "receiver", "link")}
        assert before["sender"]["satgw_sender_frames_sent_total"] == 0
        assert before["link"]['satgw_link_frames_in_total{direction="forward"}'] == 0
        wait_for(lambda: scrape(url["sender"])["satgw_sender_link_up"] == 1, 30, what="the sender to see the link up")
        sent = {rig.submit(name, data, packets=3, codec="webp"): name for name, data in make_images(8)}
        wait_for(lambda: len(rig.outputs()) == 8, 150, what="8 outputs")
        status = wait_for(lambda: (s := rig.sender_status())["counts"]["delivered"] == 8 and s, 60,
                          what="the sender to record 8 deliveries")

        # Quiescent: every frame sent has been counted by the link, and every frame delivered by the ground.
        def settled():
            s, g, lk = scrape(url["sender"]), scrape(url["receiver"]), scrape(url["link"])
            ok = (s["satgw_sender_frames_sent_total"] == lk['satgw_link_frames_in_total{direction="forward"}']
                  and g["satgw_ground_frames_received_total"]
                  == lk['satgw_link_frames_delivered_total{direction="forward"}']
                  and g["satgw_ground_ack_frames_sent_total"] == lk['satgw_link_frames_in_total{direction="return"}']
                  and s["satgw_sender_ack_frames_received_total"] + s["satgw_sender_frames_rejected_total"]
                  == lk['satgw_link_frames_delivered_total{direction="return"}'])
            return ok and (s, g, lk)

        s, g, lk = wait_for(settled, 30, what="the three daemons' frame counts to agree")
        status = rig.sender_status()
        c = status["counters"]
        assert s["satgw_sender_frames_sent_total"] == c["frames_sent"] > 0
        assert s["satgw_sender_frames_retransmitted_total"] == c["retransmissions"] > 0  # harsh loses frames
        assert s["satgw_sender_images_accepted_total"] == 8
        assert s["satgw_sender_images_delivered_total"] == 8
        assert s['satgw_sender_spool_messages{state="delivered"}'] == 8
        assert s["satgw_sender_encode_seconds_count"] == 8
        assert s["satgw_sender_bytes_sent_total"] == c["frames_sent"] * 450
        assert s["satgw_sender_spool_size_bytes"] > 0
        # Delivery semantics and faults (issue 16): every job was held or went straight to DONE, none failed.
        assert s["satgw_sender_images_held_total"] == c["held"]
        assert s['satgw_sender_images_failed_total{stage="ground"}'] == 0
        assert s['satgw_sender_resource_fault{resource="spool"}'] == 0 and s["satgw_sender_accepting"] == 1
        assert s['satgw_sender_resource_faults_total{resource="spool_file"}'] == 0

        rc = rig.receiver_status()["counters"]
        outputs = rig.outputs()
        assert g["satgw_ground_frames_received_total"] == rc["frames_in"]
        assert g['satgw_ground_frames_rejected_total{reason="crc"}'] == rc.get("bad_CRCError", 0)
        assert g["satgw_ground_frames_stored_total"] == rc["stored"]
        assert g["satgw_ground_images_delivered_total"] == 8 == len(outputs)
        assert g['satgw_ground_frame_store_messages{state="done"}'] == 8
        assert g["satgw_ground_decode_seconds_count"] == 8
        assert g["satgw_ground_image_on_air_bytes_sum"] == sum(o["bytes_on_air"] for o in outputs.values())
        assert g["satgw_ground_image_latency_seconds_count"] == 8
        assert g["satgw_ground_image_latency_seconds_sum"] == pytest.approx(
            sum(o["timings"]["latency_s"] for o in outputs.values()), abs=0.01)
        assert g["satgw_ground_frame_store_size_bytes"] > 0
        assert g["satgw_ground_decode_retries_total"] == rc.get("decode_retries", 0)
        assert g['satgw_ground_resource_fault{resource="decode"}'] == 0
        assert g["satgw_ground_decode_retrying_messages"] == 0

        stats = rig.link_stats()
        for d in ("forward", "return"):
            for cause, n in stats[d]["dropped"].items():
                assert lk[f'satgw_link_frames_dropped_total{{cause="{cause}",direction="{d}"}}'] == n
            assert lk[f'satgw_link_frames_corrupted_total{{direction="{d}"}}'] == stats[d]["corrupted"]
            assert lk[f'satgw_link_frames_duplicated_total{{direction="{d}"}}'] == stats[d]["duplicated"]
        # The harsh link did its job: frames were lost, corrupted or duplicated on the way.
        assert sum(stats["forward"]["dropped"].values()) + stats["forward"]["corrupted"] > 0
        assert lk['satgw_link_busy_seconds_total{direction="forward"}'] > 0
        assert lk["satgw_link_up"] == 1 and lk["satgw_link_time_scale"] == 50
        for side in ("sender", "ground"):  # both daemons proved the frame key: nothing refused
            assert lk[f'satgw_link_peer_messages_refused_total{{side="{side}"}}'] == stats["refused"][side] == 0
        assert set(sent) == set(outputs)

        # The sample Grafana dashboard asks only for series the daemons serve.
        served = {name.split("{")[0] for m in (s, g, lk) for name in m}
        board = json.loads((Path(__file__).resolve().parent.parent / "configs/grafana/satgw.json").read_text())
        used = {m for p in board["panels"] for t in p.get("targets", [])
                for m in re.findall(r"\bsatgw_[a-z_]+", t["expr"])}
        assert used and used <= served, f"the dashboard queries series nobody serves: {sorted(used - served)}"
    finally:
        rig.stop()
