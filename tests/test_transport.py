"""The transport room: the one control-server loop and the contact plan, without daemons."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import yaml
import zmq

from gateway.errors import ConfigError
from gateway.transport.contact_plan import AlwaysUp, PeriodicPasses, Windows, load_contact_plan, parse_contact_plan
from gateway.transport.control_server import ControlServer
from gateway.transport.eventlog import EventLog
from link_sim.config import load_link_config, parse_link_config

CONTACTS = Path(__file__).resolve().parent.parent / "configs" / "contacts"


@pytest.fixture
def server(tmp_path: Path):
    """A ControlServer on an ipc REP socket with one good and one broken command, and a REQ client."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/ctl"
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoint)
    garbage: list[int] = []
    log_lines: list[str] = []

    class Lines:
        def write(self, s: str) -> None:
            log_lines.append(s)

        def flush(self) -> None:
            pass

    def boom(req: dict) -> dict:
        raise KeyError("bug")

    srv = ControlServer(rep, {"echo": lambda req: {"ok": True, "x": req.get("x")}, "boom": boom},
                        EventLog("test", stream=Lines()), on_garbage=lambda: garbage.append(1))
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(endpoint)

    def ask(raw: bytes) -> dict:
        req.send(raw)
        assert rep.poll(2000)
        srv.serve()
        assert req.poll(2000)
        return msgpack.unpackb(req.recv(), raw=False)

    yield ask, garbage, log_lines
    ctx.destroy(linger=0)


def test_control_server_dispatches_and_answers_ping(server) -> None:
    ask, garbage, _ = server
    assert ask(msgpack.packb({"cmd": "echo", "x": 3})) == {"ok": True, "x": 3}
    assert ask(msgpack.packb({"cmd": "ping"})) == {"ok": True, "pong": True}
    assert garbage == []


@pytest.mark.parametrize("raw", [b"\xc1 not msgpack", msgpack.packb([1, 2]), msgpack.packb({"cmd": "reboot"}),
                                 msgpack.packb({"x": 1})])
def test_control_server_refuses_garbage_naming_the_commands(server, raw: bytes) -> None:
    ask, garbage, _ = server
    reply = ask(raw)
    assert reply["ok"] is False and "boom, echo, ping" in reply["error"]
    assert garbage == [1]


def test_a_failing_command_becomes_an_error_reply_and_a_log_line(server) -> None:
    ask, _, log_lines = server
    reply = ask(msgpack.packb({"cmd": "boom"}))
    assert reply == {"ok": False, "error": "internal error: KeyError"}
    assert any('"control_error"' in line and "bug" in line for line in log_lines)
    assert ask(msgpack.packb({"cmd": "ping"}))["ok"]  # and the server goes on


def test_shipped_contact_plans_load() -> None:
    leo = load_contact_plan(CONTACTS / "leo.yaml")
    assert leo.availability == PeriodicPasses(5700, 600, 0) and leo.forward_rate_bps == 9600
    for name in ("clean", "geo", "harsh"):
        assert isinstance(load_contact_plan(CONTACTS / f"{name}.yaml").availability, AlwaysUp)


def test_contact_plan_windows_and_errors_name_the_key_path() -> None:
    plan = parse_contact_plan({"version": 1, "forward_rate_bps": 2400, "availability": {"windows": [[0, 10], [20, 30]]}})
    assert isinstance(plan.availability, Windows) and plan.return_rate_bps == 2400 and plan.time_scale == 1.0
    for doc, message in (
        ({"version": 2, "forward_rate_bps": 1}, "version: must be 1"),
        ({"version": 1}, "forward_rate_bps: is required"),
        ({"version": 1, "forward_rate_bps": 1, "rate": 5}, "rate: unknown key"),
        ({"version": 1, "forward_rate_bps": 1, "availability": {"periodic": {"period_s": 10}}},
         "availability.periodic.duration_s: is required"),
        ({"version": 1, "forward_rate_bps": 1, "availability": {"contact_plan": "x.yaml"}},
         "availability.contact_plan: a contact plan cannot refer to another one"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_contact_plan(doc, source="plan.yaml")
        assert str(info.value).startswith(message), str(info.value)
        assert "plan.yaml" in str(info.value)


def test_the_link_simulator_builds_its_windows_from_a_contact_plan(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(
        {"version": 1, "forward_rate_bps": 2400, "availability": {"windows": [[5, 15]]}}))
    link = tmp_path / "link.yaml"
    link.write_text(yaml.safe_dump({"forward": {"rate_bps": 2400}, "return": {"rate_bps": 2400},
                                    "availability": {"contact_plan": "plan.yaml"}}))
    cfg = load_link_config(link)
    assert cfg.availability.is_up(10) and not cfg.availability.is_up(20)
    assert load_link_config("leo").availability == PeriodicPasses(5700, 600, 0)
    with pytest.raises(ConfigError, match="availability.contact_plan: .*missing.yaml: contact plan not found"):
        parse_link_config({"forward": {"rate_bps": 1}, "return": {"rate_bps": 1},
                           "availability": {"contact_plan": "missing.yaml"}}, base_dir=tmp_path)


def test_signed_hellos_prove_the_key_the_side_and_freshness() -> None:
    from gateway.transport.hello import HelloRefused, HelloVerifier, sign_hello

    key = b"0123456789abcdef0123"
    v = HelloVerifier(key, max_skew_s=60)
    first = sign_hello(key, "ground", now=1000.0)
    v.verify("ground", first, now=1000.5)
    v.verify("ground", sign_hello(key, "ground", now=1001.0), now=1001.0)
    cases = [
        ("ground", first, 1001.5, "not newer"),  # a recorded hello, replayed
        ("sender", sign_hello(key, "ground", now=1002.0), 1002.0, "other side"),
        ("ground", sign_hello(b"another key entirely!", "ground", now=1003.0), 1003.0, "signature"),
        ("ground", sign_hello(key, "ground", now=900.0), 1004.0, "clock"),
        ("ground", b"H" * 5, 1005.0, "34 bytes"),
    ]
    for side, hello, now, words in cases:
        with pytest.raises(HelloRefused, match=words):
            v.verify(side, hello, now=now)
