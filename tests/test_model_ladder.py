"""The model ladder: which CADC bundle encodes a picture, by the budget's bits per pixel; the ground decodes them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.daemon.config import load_sender_config
from gateway.errors import ConfigError
from gateway.paths import bundle_dir, embedded_bundles
from gateway.ratecontrol import Budget
from gateway.ratecontrol.ladder import ModelLadder, Rung, budget_bpp, ladder_for

ROOT = Path(__file__).resolve().parent.parent
LINK = {"link.endpoint": "ipc:///tmp/x", "link.control": "ipc:///tmp/x-control"}


def test_bits_per_pixel_come_from_the_packetizers_budget() -> None:
    b = Budget(4)
    assert budget_bpp(b, 768, 512) == pytest.approx(b.bytes * 8 / (768 * 512))
    with pytest.raises(ConfigError, match="no bits per pixel"):
        budget_bpp(b, 0, 10)


def test_the_rung_is_the_highest_whose_start_the_budget_reaches() -> None:
    ladder = ModelLadder((Rung(None, 0.0), Rung("b", 0.02), Rung("c", 0.05)))
    bpp1 = budget_bpp(Budget(1), 768, 512)  # ~0.009
    assert ladder.bundle_for(Budget(1), 768, 512) is None
    assert ladder.bundle_for(Budget(4), 768, 512) == "b"  # ~0.037
    assert ladder.bundle_for(Budget(8), 768, 512) == "c"  # ~0.073
    # from_bpp is where a rung starts: a budget exactly there goes to it
    exact = ModelLadder((Rung(None, 0.0), Rung("b", bpp1)))
    assert exact.bundle_for(Budget(1), 768, 512) == "b"
    # the same frames are a generous budget for a small picture
    assert ladder.bundle_for(Budget(1), 96, 64) == "c"


@settings(max_examples=60, deadline=None)
@given(starts=st.lists(st.floats(0.001, 1.0), min_size=0, max_size=4, unique=True),
       w=st.integers(16, 4000), h=st.integers(16, 4000), frames=st.integers(1, 40))
def test_more_frames_never_step_down_the_ladder(starts: list[float], w: int, h: int, frames: int) -> None:
    rungs = (Rung(None, 0.0), *(Rung(f"m{i}", s) for i, s in enumerate(sorted(starts))))
    ladder = ModelLadder(rungs)
    index = [r.bundle for r in rungs].index
    lo, hi = ladder.rung_for(Budget(frames), w, h), ladder.rung_for(Budget(frames + 1), w, h)
    assert index(lo.bundle) <= index(hi.bundle)
    bpp = budget_bpp(Budget(frames), w, h)
    assert lo.from_bpp <= bpp and all(r.from_bpp > bpp for r in rungs[index(lo.bundle) + 1:])


@pytest.mark.parametrize("items, message", [
    ([], "at least one rung"),
    ([{"bundle": None, "from_bpp": 0.01}], "first rung must start at from_bpp 0"),
    ([{"bundle": None, "from_bpp": 0}, {"bundle": "a", "from_bpp": 0}], "increasing from_bpp"),
    ([{"bundle": "a", "from_bpp": 0}, {"bundle": "a", "from_bpp": 0.1}], "two rungs"),
    ([{"bundle": None, "from_bpp": 0}, {"bundle": None, "from_bpp": 0.1}], "two rungs"),
    ([{"bundle": None}], "must be {bundle: FOLDER, from_bpp: X}"),
    ([{"bundle": None, "from_bpp": 0, "at": 1}], "must be {bundle: FOLDER, from_bpp: X}"),
    ([{"bundle": None, "from_bpp": -1}], "from_bpp must be a number"),
    ([{"bundle": None, "from_bpp": True}], "from_bpp must be a number"),
    ([{"bundle": 3, "from_bpp": 0}], "bundle must be a folder"),
    ("cadc-tiny", "is a list of"),
])
def test_a_bad_ladder_says_what_is_wrong(items: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        ModelLadder.from_list(items, source="test")


def test_relative_bundles_are_taken_from_the_ladders_folder(tmp_path: Path) -> None:
    ladder = ModelLadder.from_list([{"bundle": None, "from_bpp": 0}, {"bundle": "m2", "from_bpp": 0.5},
                                    {"bundle": "/abs/m3", "from_bpp": 1}], base=tmp_path)
    assert ladder.bundles == (None, str(tmp_path / "m2"), "/abs/m3")


def test_the_embedded_ladder_names_the_embedded_models() -> None:
    from gateway.codec.cadc.bundle import bundle_model_id

    ladder = ModelLadder.embedded()
    assert ladder.rungs[0] == Rung(None, 0.0)
    assert len(ladder.rungs) >= 2, "the package ships more than one CADC model"
    assert set(ladder.bundles) == set(embedded_bundles())
    ids = [bundle_model_id(b or bundle_dir("cadc-tiny")) for b in ladder.bundles]
    assert len(set(ids)) == len(ids)
    for b in ladder.bundles[1:]:
        assert (Path(b) / "MODEL_CARD.md").is_file()
    # Kodak's size: the smallest budgets stay on the first model, the largest go up
    assert ladder.bundle_for(Budget(1), 768, 512) is None
    assert ladder.bundle_for(Budget(8), 768, 512) == ladder.bundles[-1]


def test_a_sender_encodes_with_its_bundle_alone_or_with_a_ladder(tmp_path: Path) -> None:
    from gateway.sender.auto_codecs import sender_ladder

    assert sender_ladder(load_sender_config(None, LINK)) == ModelLadder.embedded()
    assert sender_ladder(load_sender_config(None, {**LINK, "bundle": "/models/x"})).bundles == ("/models/x",)
    rungs = [{"bundle": "/models/a", "from_bpp": 0}, {"bundle": "/models/b", "from_bpp": 0.04}]
    assert sender_ladder(load_sender_config(None, {**LINK, "ladder": rungs})).bundles == ("/models/a", "/models/b")
    with pytest.raises(ConfigError, match=r"ladder.*bundle are both set.*\(in "):
        load_sender_config(None, {**LINK, "ladder": rungs, "bundle": "/models/x"})
    with pytest.raises(ConfigError, match=r"ladder: must be a list of"):
        load_sender_config(None, {**LINK, "ladder": "models/a"})
    bad = load_sender_config(None, {**LINK, "ladder": [rungs[0], {"bundle": "/models/b", "from_bpp": 0}]})
    with pytest.raises(ConfigError, match=r"ladder \(in <defaults>\).*increasing from_bpp"):
        sender_ladder(bad)
    assert ladder_for("/models/x", None).bundles == ("/models/x",)


def test_the_ground_decodes_every_embedded_models_bitstreams_by_default() -> None:
    from gateway.codec import bitstream
    from gateway.codec.registry import decoder_for, get_codec
    from gateway.errors import ModelMismatch

    y16 = get_codec("cadc", embedded_bundles()[-1], encoder_only=True)
    def header(model_id: int) -> bitstream.Header:
        return bitstream.Header(bitstream.CODEC_IDS["cadc"], model_id, 64, 64, 0, 0, 0, 0)

    codec = decoder_for(header(y16.model_id))  # the default: every embedded model
    assert codec.model_id == y16.model_id and codec.decodes
    assert decoder_for(header(y16.model_id), ("/no/such/bundle", None)) is codec
    with pytest.raises(ModelMismatch, match="none of this host's CADC bundles"):
        decoder_for(header(0x0001))


def _satgw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=300)


def test_satgw_encode_climbs_the_ladder_with_the_budget_and_decode_follows(tmp_path: Path) -> None:
    from PIL import Image

    from gateway.codec.cadc.bundle import bundle_model_id

    rng = np.random.default_rng(3)
    big = np.clip(rng.normal(128, 40, (32, 48, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(big).resize((768, 512), Image.BICUBIC).save(tmp_path / "pic.png")
    ids = [f"{bundle_model_id(b or bundle_dir('cadc-tiny')):04x}" for b in ModelLadder.embedded().bundles]
    seen = []
    for frames in (1, 8):
        out = tmp_path / f"pic-{frames}.sgw"
        r = _satgw("encode", str(tmp_path / "pic.png"), "--packets", str(frames), "--codec", "cadc", "-o", str(out),
                   "--json")
        assert r.returncode == 0, r.stderr
        seen.append(json.loads(r.stdout)["setting"]["model_id"])
    assert seen == [ids[0], ids[-1]]
    r = _satgw("decode", str(tmp_path / "pic-8.sgw"), "-o", str(tmp_path / "pic-8.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "pic-8.png").size == (768, 512)


def test_ladder_models_load_every_rung_once_and_pick_by_budget() -> None:
    from gateway.ratecontrol.ladder import LadderModels

    rungs = LadderModels(ModelLadder.embedded(), encoder_only=True)
    assert rungs.name == "cadc" and set(rungs.models) == set(ModelLadder.embedded().bundles)
    assert rungs.for_budget(Budget(1), 768, 512) is rungs.models[None]
    assert rungs.for_budget(Budget(8), 768, 512) is rungs.models[ModelLadder.embedded().bundles[-1]]
