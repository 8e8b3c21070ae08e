"""Link presets load; bad configs raise ConfigError naming the key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import ConfigError as GatewayConfigError
from gateway.transport.contact_plan import AlwaysUp, PeriodicPasses, Windows
from link_sim.config import load_link_config, parse_link_config
from link_sim.errors import ConfigError, LinkSimError
from gateway.transport.curve import generate_keypair

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "links"


def base(**changes: Any) -> dict:
    cfg: dict = {"forward": {"rate_bps": 2400}, "return": {"rate_bps": 2400}}
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("name", ["clean", "geo", "leo", "harsh"])
def test_presets_load(name: str) -> None:
    by_name = load_link_config(name)
    by_path = load_link_config(PRESETS / f"{name}.yaml")
    assert by_name == by_path
    assert by_name.name == name
    assert by_name.forward.frame_size == 450 and by_name.ret.frame_size == 450
    assert by_name.endpoints.sender_side == "tcp://127.0.0.1:5551"
    assert by_name.endpoints.ground_side == "tcp://127.0.0.1:5552"
    assert by_name.endpoints.control == "tcp://127.0.0.1:5553"


def test_preset_shapes_match_their_descriptions() -> None:
    geo, leo, harsh = load_link_config("geo"), load_link_config("leo"), load_link_config("harsh")
    assert geo.forward.rate_bps == 2400 and geo.forward.delay.propagation_s == pytest.approx(0.27)
    assert geo.forward.loss == pytest.approx(0.01) and isinstance(geo.availability, AlwaysUp)
    assert leo.forward.rate_bps == 9600 and isinstance(leo.availability, PeriodicPasses)
    assert leo.availability.duration_s == 600 and leo.availability.period_s == 95 * 60
    assert leo.forward.gilbert_elliott is not None
    assert harsh.forward.gilbert_elliott is not None
    assert harsh.forward.gilbert_elliott.average_loss == pytest.approx(0.20)
    assert harsh.forward.ber == pytest.approx(1e-5)
    assert load_link_config("clean").forward.loss == 0 and load_link_config("clean").forward.gilbert_elliott is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"forward": {"rate_bps": 2400, "gilbert_elliott": {"p": 1.5, "r": 0.1}}},
         "forward.gilbert_elliott.p: must be between 0 and 1, got 1.5"),
        ({"forward": {"rate_bps": 2400, "rate": 5}}, "forward.rate: unknown key"),
        ({"forward": {"frame_size": 450}}, "forward.rate_bps: is required"),
        ({"forward": {"rate_bps": -1}}, "forward.rate_bps: must be greater than 0"),
        ({"forward": {"rate_bps": "fast"}}, "forward.rate_bps: must be a number, got 'fast'"),
        ({"forward": {"rate_bps": True}}, "forward.rate_bps: must be a finite number"),
        ({"forward": {"rate_bps": 2400, "loss": {"p": 2}}}, "forward.loss.p: must be between 0 and 1, got 2"),
        ({"forward": {"rate_bps": 2400, "loss": 0.1}}, "forward.loss: must be a mapping"),
        ({"return": {"rate_bps": 2400, "bit_errors": {"ber": -1e-5}}}, "return.bit_errors.ber: must be between 0 and 1"),
        ({"return": {"rate_bps": 2400, "queue": {"frames": 0}}}, "return.queue.frames: must be between 1 and"),
        ({"return": {"rate_bps": 2400, "queue": {"frames": 2.5}}}, "return.queue.frames: must be a whole number"),
        ({"return": {"rate_bps": 2400, "delay": {"propagation_s": -0.1}}}, "return.delay.propagation_s: must be between 0"),
        ({"return": {"rate_bps": 2400, "duplicate": {"q": 0.1}}}, "return.duplicate.q: unknown key"),
        ({"forward": {"rate_bps": 2400, "gilbert_elliott": {"p": 0.1}}}, "forward.gilbert_elliott.r: is required"),
        ({"forward": {"rate_bps": 2400, "gilbert_elliott": {"p": 0.1, "r": 0.2, "average_loss": 0.1}}},
         "forward.gilbert_elliott: give either p and r, or mean_burst_frames and average_loss"),
        ({"forward": {"rate_bps": 2400, "gilbert_elliott": {"mean_burst_frames": 0.5, "average_loss": 0.1}}},
         "forward.gilbert_elliott.mean_burst_frames: must be between 1"),
        ({"forward": {"rate_bps": 2400, "gilbert_elliott": {"mean_burst_frames": 1, "average_loss": 0.9}}},
         "forward.gilbert_elliott.mean_burst_frames: too short for average_loss 0.9"),
        ({"availability": {"periodic": {"period_s": 100, "duration_s": 200}}},
         "availability.periodic.duration_s: must be greater than 0 and at most 100, got 200"),
        ({"availability": {"windows": [[0, 10], [30, 20]]}}, "availability.windows[1]: end (20) must be after start (30)"),
        ({"availability": {"windows": [[0, 10], 5]}}, "availability.windows[1]: must be a [start_s, end_s] pair"),
        ({"availability": {"windows": [[0, 1]], "periodic": {"period_s": 1, "duration_s": 1}}},
         "availability: give one of always, windows, periodic"),
        ({"time_scale": 0}, "time_scale: must be greater than 0"),
        ({"seed": -3}, "seed: must be between 0 and"),
        ({"endpoints": {"control": "localhost:5553"}}, "endpoints.control: must be a ZMQ endpoint"),
        ({"endpoint": {}}, "endpoint: unknown key"),
        ({"curve": {"public_key": "missing.key", "secret_key": "missing.key_secret"}},
         "curve.public_key: cannot read CURVE key"),
    ],
)
def test_bad_values_name_the_key_path(changes: dict, message: str) -> None:
    cfg = base()
    cfg.update(changes)
    with pytest.raises(ConfigError) as info:
        parse_link_config(cfg, source="test.yaml")
    assert str(info.value).startswith(message), str(info.value)
    assert "test.yaml" in str(info.value)


def test_missing_sections_and_non_mapping_documents() -> None:
    with pytest.raises(ConfigError, match="^return: is required"):
        parse_link_config({"forward": {"rate_bps": 1}})
    with pytest.raises(ConfigError, match="^<top level>: must be a mapping"):
        parse_link_config([1, 2, 3])


def test_config_error_is_catchable_as_the_gateways_config_error() -> None:
    with pytest.raises(GatewayConfigError):
        parse_link_config({"forward": {"rate_bps": 0}})
    assert issubclass(ConfigError, LinkSimError)


def test_yaml_numbers_without_a_dot_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("forward: {rate_bps: 9600, bit_errors: {ber: 1e-5}}\nreturn: {rate_bps: 2400}\n")
    cfg = load_link_config(path)
    assert cfg.forward.ber == pytest.approx(1e-5)  # YAML 1.1 reads 1e-5 as a string; accepted
    assert cfg.time_scale == 1.0 and cfg.seed == 0 and cfg.stats_interval_s == 10
    assert cfg.forward.queue.frames == 1000  # never an unbounded queue
    assert cfg.name == "x"


def test_windows_and_periodic_become_availability_objects() -> None:
    w = parse_link_config(base(availability={"windows": [[0, 10], [20, 30]]})).availability
    assert isinstance(w, Windows) and w.is_up(5) and not w.is_up(15) and w.next_change(15) == 20
    p = parse_link_config(base(availability={"periodic": {"period_s": 60, "duration_s": 6, "offset_s": 30}})).availability
    assert isinstance(p, PeriodicPasses) and p.is_up(31) and not p.is_up(29)


def test_unreadable_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="link config not found"):
        load_link_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("forward: {rate_bps: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_link_config(bad)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="too big"):
        load_link_config(huge)


def test_curve_keys_load_relative_to_the_config(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "keys", "link")
    generate_keypair(tmp_path / "keys", "sender")
    path = tmp_path / "link.yaml"
    path.write_text(
        yaml.safe_dump(
            base(curve={"public_key": "keys/link.key", "secret_key": "keys/link.key_secret",
                        "allowed_clients": ["keys/sender.key"]})
        )
    )
    cfg = load_link_config(path)
    assert cfg.curve is not None and len(cfg.curve.public) == 40 and len(cfg.curve.allowed_clients) == 1
