"""The daemons' typed configs: shipped files and defaults load; every mistake names its key and file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from gateway.daemon.config import (
    NULL,
    ArqSettings,
    LinkSettings,
    ReceiverConfig,
    SenderConfig,
    load_receiver_config,
    load_sender_config,
    read_auth_key,
)
from gateway.daemon.startup import add_link_options, link_overrides
from gateway.errors import ConfigError

DAEMONS = Path(__file__).resolve().parent.parent / "configs" / "daemons"
LINK = {"link.endpoint": "ipc:///tmp/x"}


def test_shipped_configs_load_into_typed_records() -> None:
    s = load_sender_config(DAEMONS / "sender.yaml")
    assert isinstance(s, SenderConfig) and s.source.endswith("sender.yaml")
    assert s.link == LinkSettings("tcp://127.0.0.1:5551", "tcp://127.0.0.1:5553", None, 0.5, 0.5)
    assert s.arq == ArqSettings(4.0, 0.2, 120.0, 2, 50, 86400.0, 1)
    assert (s.defaults.codec, s.defaults.packets, s.limits.max_pixels, s.frame.size, s.curve_dir) == (
        "webp", 8, 64_000_000, 450, None)
    assert s.refine_steps == 0  # encoder-side refinement is off unless asked for
    r = load_receiver_config(DAEMONS / "receiver.yaml")
    assert isinstance(r, ReceiverConfig)
    assert (r.decode.worker, r.decode.max_attempts, r.ack.meta_grace_s, r.limits.max_batch_frames) == (
        "process", 3, 300.0, 256)


def test_defaults_need_only_the_link_endpoint_and_a_schedule_source() -> None:
    with pytest.raises(ConfigError, match="^link.endpoint: is required"):
        load_sender_config(None)
    with pytest.raises(ConfigError, match="^link.control: is null and link.contact_plan is not set"):
        load_sender_config(None, LINK)
    cfg = load_receiver_config(None, {**LINK, "link.contact_plan": "plan.yaml"})
    assert cfg.store == "var/receiver/frames.db" and cfg.link.control is None and cfg.source == "<defaults>"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"spoool": "x.db"}, "spoool: unknown key; expected one of: "),
        ({"arq": {"min_rto": 1}}, "arq.min_rto: unknown key"),
        ({"arq": {"reorder_frames": -1}}, "arq.reorder_frames: must be between 0 and 10000, got -1"),
        ({"arq": {"initial_rto_s": 500}}, "arq.initial_rto_s: must lie between arq.min_rto_s and arq.max_rto_s"),
        ({"frame": {"size": "450"}}, "frame.size: must be a whole number, got '450'"),
        ({"defaults": {"packets": True}}, "defaults.packets: must be a whole number, got True"),
        ({"log_level": "loud"}, "log_level: must be one of debug, info, warning, error, got 'loud'"),
        ({"control": "127.0.0.1:5601"}, "control: must be a ZMQ endpoint"),
        ({"spool": None}, "spool: is required"),
        ({"refine_steps": -2}, "refine_steps: must be between 0 and 1000, got -2"),
        ({"link": "tcp://x"}, "link: must be a mapping"),
    ],
)
def test_mistakes_name_the_dotted_key_and_the_file(tmp_path: Path, changes: dict, message: str) -> None:
    cfg = yaml.safe_load((DAEMONS / "sender.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / "sender.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        load_sender_config(path)
    assert str(info.value).startswith(message), str(info.value)
    assert str(path) in str(info.value)


def test_overrides_lay_over_the_file_and_null_clears() -> None:
    cfg = load_sender_config(DAEMONS / "sender.yaml", {"spool": "/tmp/s.db", "arq.ttl_s": 60, "inbox": None})
    assert cfg.spool == "/tmp/s.db" and cfg.arq.ttl_s == 60 and cfg.inbox == "var/sender/inbox"  # None: not given
    with pytest.raises(ConfigError, match="^link.control: is null"):
        load_sender_config(DAEMONS / "sender.yaml", {"link.control": NULL})


def test_contact_plan_on_the_command_line_replaces_the_links_control_socket() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--control")
    add_link_options(p, "sender-side")
    cfg = load_sender_config(DAEMONS / "sender.yaml", link_overrides(p.parse_args(["--contact-plan", "leo.yaml"])))
    assert (cfg.link.control, cfg.link.contact_plan) == (None, "leo.yaml")
    both = link_overrides(p.parse_args(["--contact-plan", "leo.yaml", "--link-control", "tcp://127.0.0.1:9"]))
    assert load_sender_config(DAEMONS / "sender.yaml", both).link.control == "tcp://127.0.0.1:9"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_receiver_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_receiver_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("store: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_receiver_config(tmp_path / "bad.yaml")


def test_auth_key_file(tmp_path: Path) -> None:
    assert read_auth_key(None) is None
    (tmp_path / "k").write_bytes(b"  0123456789abcdef\n")
    assert read_auth_key(str(tmp_path / "k")) == b"0123456789abcdef"
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(ConfigError, match="^frame.auth_key_file: .* holds 5 bytes"):
        read_auth_key(str(tmp_path / "short"))
    with pytest.raises(ConfigError, match="^frame.auth_key_file: cannot read"):
        read_auth_key(str(tmp_path / "missing"))


def test_the_sample_configs_authenticate_frames_with_a_generated_key(tmp_path: Path) -> None:
    s, r = load_sender_config(DAEMONS / "sender.yaml"), load_receiver_config(DAEMONS / "receiver.yaml")
    assert s.frame.auth_key_file == r.frame.auth_key_file == "var/keys/frame.key"
    assert s.frame.create_key and r.frame.create_key
    key_file = tmp_path / "keys" / "frame.key"
    first = read_auth_key(str(key_file), create=True)
    assert first is not None and len(first) >= 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert read_auth_key(str(key_file), create=True) == first  # the second daemon reads the same key
    assert (r.decode.retry_initial_s, r.decode.retry_max_s, r.decode.check_bundle, r.limits.max_image_pixels) == (
        1.0, 60.0, True, 64_000_000)


def test_new_receiver_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="decode.check_bundle: must be true or false"):
        load_receiver_config(None, {**LINK, "link.contact_plan": "x.yaml", "decode.check_bundle": "yes"})
    with pytest.raises(ConfigError, match="decode.retry_max_s: must be at least decode.retry_initial_s"):
        load_receiver_config(None, {**LINK, "link.contact_plan": "x.yaml", "decode.retry_initial_s": 10,
                                    "decode.retry_max_s": 5})
    with pytest.raises(ConfigError, match="limits.max_image_pixels"):
        load_receiver_config(None, {**LINK, "link.contact_plan": "x.yaml", "limits.max_image_pixels": 0})
